// Fills a signup form's hidden `timezone` field with the browser's time zone (an IANA name such as
// Europe/London), so that the lead's emails keep to its own hours. Without script the field stays
// empty, and the funnel's zone applies. Loaded from the app itself, so a page whose
// Content-Security-Policy allows only its own origin's scripts still runs it.
(function () {
  "use strict";
  var zone;
  try {
    zone = Intl.DateTimeFormat().resolvedOptions().timeZone;
  } catch (e) {
    return;
  }
  if (!zone) {
    return;
  }
  var fields = document.querySelectorAll('input[name="timezone"]');
  for (var i = 0; i < fields.length; i++) {
    if (!fields[i].value) {
      fields[i].value = zone;
    }
  }
})();

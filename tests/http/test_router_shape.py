"""The shape of the HTTP app: each router is a module-level object whose routes exist once the module is
imported, its handlers are module-level functions that get the app's context through dependencies, and
no function of the HTTP modules is longer than a screen."""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path
from types import ModuleType

import pytest
from fastapi import APIRouter
from fastapi.routing import APIRoute

from engine.http import api

ROUTER_MODULES = [
    "engine.http.api",
    "engine.http.api_v1",
    "engine.http.pages",
    "engine.http.hooks",
    "engine.http.forms",
    "engine.http.dashboard",
    "engine.http.provider_hooks",
]
HTTP_MODULES = [*ROUTER_MODULES, "engine.http.http_context", "engine.http.deps", "engine.http.event_intake"]
MAX_LINES = 80
ROUTE_METHODS = {"get", "post", "put", "delete", "patch", "head", "options", "api_route", "route"}


def source_of(name: str) -> tuple[Path, str]:
    path = Path(inspect.getfile(importlib.import_module(name)))
    return path, path.read_text()


def long_functions(source: str, limit: int = MAX_LINES) -> list[str]:
    """Every function or method (nested ones included) longer than `limit` lines, decorators counted."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            lines = (node.end_lineno or node.lineno) - first + 1
            if lines > limit:
                found.append(f"{node.name} (line {first}): {lines} lines")
    return found


def routes_declared_in_functions(source: str) -> list[str]:
    """Route handlers declared inside a function (`@router.get` in a factory): routes that exist only once
    the function has run, and handlers that reach the app through its closure."""
    found = []
    for outer in ast.walk(ast.parse(source)):
        if not isinstance(outer, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for node in ast.walk(outer):
            if node is outer or not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for decorator in node.decorator_list:
                call = decorator.func if isinstance(decorator, ast.Call) else decorator
                if isinstance(call, ast.Attribute) and call.attr in ROUTE_METHODS:
                    found.append(f"{node.name} (line {node.lineno}) inside {outer.name}")
    return found


@pytest.mark.parametrize("name", HTTP_MODULES)
def test_no_function_of_the_http_modules_is_over_80_lines(name: str) -> None:
    path, source = source_of(name)
    assert long_functions(source) == [], path


@pytest.mark.parametrize("name", ROUTER_MODULES)
def test_no_route_is_declared_inside_a_function(name: str) -> None:
    path, source = source_of(name)
    assert routes_declared_in_functions(source) == [], path


@pytest.mark.parametrize("name", ROUTER_MODULES)
def test_each_router_is_a_module_level_object_with_module_level_handlers(name: str) -> None:
    module: ModuleType = importlib.import_module(name)
    router = module.router
    assert isinstance(router, APIRouter)
    routes = [r for r in router.routes if isinstance(r, APIRoute)]
    assert routes, f"{name}.router has no routes once imported"
    for route in routes:
        handler = route.endpoint
        assert "<locals>" not in handler.__qualname__, f"{route.path}: {handler.__qualname__}"
        assert getattr(module, handler.__name__, None) is handler, f"{route.path}: not {name}.{handler.__name__}"


def test_the_app_is_made_of_the_modules_routers() -> None:
    assert [id(r) for r in api.ROUTERS] == [id(importlib.import_module(m).router) for m in ROUTER_MODULES]


# The checks themselves: each finds what it is meant to find.
FACTORY = """
def router(ctx):
    router = APIRouter()

    @router.get("/x")
    def x():
        return ctx
""" + "\n".join(f"    y{i} = {i}" for i in range(80))


def test_the_checks_find_a_long_function_and_a_route_in_a_factory() -> None:
    assert long_functions(FACTORY) == ["router (line 2): 86 lines"]
    assert routes_declared_in_functions(FACTORY) == ["x (line 6) inside router"]

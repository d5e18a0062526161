"""Training recipes: TOML files whose ``[train]`` table sets ``compactnets train`` options.

A recipe name refers to ``compactnets/recipes/<name>.toml``; a path to any .toml file works too. Keys are the
option names with dashes or underscores (``lr``, ``weight_decay``, ``lr-milestones``). Values are checked
against the options' types and choices; the command line overrides any of them.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

RECIPE_DIR = Path(__file__).resolve().parent.parent / "recipes"
_METADATA_KEYS = {"description", "source", "reference", "notes"}


class RecipeError(ValueError):
    pass


def list_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPE_DIR.glob("*.toml"))


def recipe_path(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise RecipeError(f"recipe file not found: {path}")
        return path
    path = RECIPE_DIR / f"{name_or_path}.toml"
    if not path.is_file():
        close = difflib.get_close_matches(name_or_path, list_recipes(), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise RecipeError(f"unknown recipe {name_or_path!r}{hint} (`compactnets list --recipes` shows all)")
    return path


def read_recipe(name_or_path: str) -> dict:
    """The whole recipe file as a dict (metadata and the ``[train]`` table)."""
    path = recipe_path(name_or_path)
    try:
        recipe = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise RecipeError(f"malformed recipe {path}: {e}") from e
    unknown = set(recipe) - _METADATA_KEYS - {"train"}
    if unknown or not isinstance(recipe.get("train"), dict):
        raise RecipeError(
            f"malformed recipe {path}: expected a [train] table and optional {sorted(_METADATA_KEYS)}"
            + (f", found {sorted(unknown)}" if unknown else "")
        )
    return recipe


def _check_value(path: Path, key: str, value, action: argparse.Action):
    """The value converted like the command line would, or a RecipeError naming the key."""

    def fail(expected: str):
        raise RecipeError(f"malformed recipe {path}: {key} = {value!r} should be {expected}")

    if action.nargs == 0:  # on/off flags
        if not isinstance(value, bool):
            fail("true or false")
        return value
    many = action.nargs in ("+", "*")
    items = value if many else [value]
    if many and not isinstance(value, list):
        fail("a list")
    out = []
    for item in items:
        if isinstance(item, (dict, list)) or isinstance(item, bool):
            fail(f"a {getattr(action.type, '__name__', 'value')}")
        if action.type in (int, float):
            if not isinstance(item, (int, float)) or (action.type is int and not float(item).is_integer()):
                fail(f"a number ({action.type.__name__})")
            item = action.type(item)
        elif action.type is not None:
            try:
                item = action.type(str(item))
            except (TypeError, ValueError, argparse.ArgumentTypeError):
                fail(f"a valid {action.dest}")
        if action.choices is not None and item not in action.choices:
            fail(f"one of {', '.join(map(str, action.choices))}")
        out.append(item)
    return out if many else out[0]


def recipe_defaults(parser: argparse.ArgumentParser, name_or_path: str) -> dict:
    """The recipe's ``[train]`` values keyed by option dest, validated against ``parser``."""
    path = recipe_path(name_or_path)
    actions = {a.dest: a for a in parser._actions if a.dest not in ("help", "recipe")}
    values = {}
    for key, value in read_recipe(name_or_path)["train"].items():
        dest = key.replace("-", "_")
        if dest not in actions:
            close = difflib.get_close_matches(dest, list(actions), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise RecipeError(f"malformed recipe {path}: unknown option {key!r}{hint}")
        values[dest] = _check_value(path, key, value, actions[dest])
    return values

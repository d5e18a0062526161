"""Training recipes: TOML files whose ``[train]`` table sets ``compactnets train`` options.

A recipe name refers to ``compactnets/recipes/<name>.toml``; a path to any .toml file works too. Keys are the
option names with dashes or underscores (``lr``, ``weight_decay``, ``lr-milestones``). Values are checked
against the options' types and choices; the command line overrides any of them.

Optional ``[[phases]]`` tables split training into consecutive phases, each with its own ``epochs`` and any
optimisation options (lr, schedule, ...), a fresh optimizer, and ``restart_from_best = true`` to reload the best
checkpoint so far first (Net_RL2's CIFAR-100 recipe). The run's ``epochs`` is then the sum of the phases'.
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
_METADATA_KEYS = {"description", "source", "reference", "notes", "shortens"}  # shortens: the paper recipe
PHASE_GROUP = "optimisation"  # the option group whose options a phase may set


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
    unknown = set(recipe) - _METADATA_KEYS - {"train", "phases"}
    if unknown or not isinstance(recipe.get("train"), dict):
        raise RecipeError(
            f"malformed recipe {path}: expected a [train] table, optional [[phases]] and {sorted(_METADATA_KEYS)}"
            + (f", found {sorted(unknown)}" if unknown else "")
        )
    if "phases" in recipe and not (
        isinstance(recipe["phases"], list) and recipe["phases"] and all(isinstance(p, dict) for p in recipe["phases"])
    ):
        raise RecipeError(f"malformed recipe {path}: phases must be [[phases]] tables")
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


def _check_table(path: Path, table: dict, actions: dict, where: str) -> dict:
    values = {}
    for key, value in table.items():
        dest = key.replace("-", "_")
        if dest not in actions:
            close = difflib.get_close_matches(dest, list(actions), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise RecipeError(f"malformed recipe {path}: unknown option {key!r}{where}{hint}")
        values[dest] = _check_value(path, key, value, actions[dest])
    return values


def recipe_defaults(parser: argparse.ArgumentParser, name_or_path: str) -> dict:
    """The recipe's values keyed by option dest (``phases``: a list of dicts), validated against ``parser``."""
    path = recipe_path(name_or_path)
    recipe = read_recipe(name_or_path)
    actions = {a.dest: a for a in parser._actions if a.dest not in ("help", "recipe")}
    values = _check_table(path, recipe["train"], actions, "")
    if "phases" in recipe:
        group = next(g for g in parser._action_groups if g.title == PHASE_GROUP)
        phase_actions = {a.dest: a for a in group._group_actions}
        phase_actions["restart_from_best"] = argparse._StoreTrueAction([], "restart_from_best")
        phases = []
        for i, table in enumerate(recipe["phases"]):
            phase = _check_table(path, table, phase_actions, f" in phase {i + 1}")
            if phase.get("epochs", 0) <= 0:
                raise RecipeError(f"malformed recipe {path}: phase {i + 1} needs epochs > 0")
            phases.append(phase)
        total = sum(p["epochs"] for p in phases)
        if values.get("epochs", total) != total:
            raise RecipeError(f"malformed recipe {path}: epochs = {values['epochs']} but the phases sum to {total}")
        values.update(phases=phases, epochs=total)
    return values

"""What a model file may declare, checked before anything it declares is built or allocated.

A model file is a few hundred kilobytes of plain data, but what it declares (an architecture's widths, an ensemble's
members, crop sizes) decides how much memory loading and running it takes. These checks bound the declarations and
the types of the fields agecli reads, so a hostile or hand-edited file is one line naming the file and the field.
No torch here: the ONNX path uses this module too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from agecli.data.preprocess import LEGACY_NAMES, MAX_SIDE, Preprocess
from agecli.errors import AgeCliError

MAX_MEMBERS = 64  # models in an ensemble
MAX_VIEWS = 32  # test-time crop shifts of an ensemble
MAX_DEPTH = 8  # nesting of lists and mappings in model.kwargs
MAX_ITEMS = 10_000  # values in model.kwargs, all levels together

SIDE_FIELDS = ("input_size", "crop_size")
NUMBER_FIELDS = ("margin", "shift", "age_min", "age_max")
TEXT_FIELDS = ("channel_order", "detector", "align")


def type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_side(value: Any, field: str, where: str, allow_zero: bool = False) -> int:
    """A crop or input side: an integer from 1 (0 too when allowed: 'the same as the input') to MAX_SIDE."""
    if not is_int(value):
        raise AgeCliError(f"{where}: {field} must be an integer number of pixels, got {type_name(value)} {value!r:.40}")
    if not (0 if allow_zero else 1) <= value <= MAX_SIDE:
        raise AgeCliError(f"{where}: {field} {value} is outside 1..{MAX_SIDE} pixels")
    return value


def check_preprocess(stored: Any, where: str, field: str = "preprocess") -> Preprocess:
    """The Preprocess a stored dict describes (None: the old defaults), every value of the right type and in bounds."""
    if stored is None:
        stored = {}
    if not isinstance(stored, Mapping):
        raise AgeCliError(f"{where}: {field} must be a mapping of preprocessing values, got {type_name(stored)}")
    for key, value in stored.items():
        name = LEGACY_NAMES.get(key, key)
        label = f"{field}.{key}"
        if name == "crop_size" and value is None:
            continue  # None and 0 both mean 'the same as input_size'
        if name in SIDE_FIELDS:
            check_side(value, label, where, allow_zero=name == "crop_size")
        elif name in NUMBER_FIELDS and not is_number(value):
            raise AgeCliError(f"{where}: {label} must be a number, got {type_name(value)} {value!r:.40}")
        elif name in ("mean", "std") and not (isinstance(value, (list, tuple)) and len(value) == 3
                                              and all(is_number(v) for v in value)):
            raise AgeCliError(f"{where}: {label} must be a list of three numbers, got {value!r:.60}")
        elif name == "std" and any(v == 0 for v in value):
            raise AgeCliError(f"{where}: {label} must not hold a zero (it divides the pixels)")
        elif name in TEXT_FIELDS and not (value is None or isinstance(value, str)):
            raise AgeCliError(f"{where}: {label} must be text, got {type_name(value)}")
    try:
        return Preprocess.from_dict(stored)
    except AgeCliError as err:
        raise AgeCliError(f"{where}: {err}") from None


def check_plain_data(value: Any, field: str, where: str) -> None:
    """Mappings with text keys, lists, numbers, text, booleans and nulls only, nested at most MAX_DEPTH deep and
    MAX_ITEMS values in all. Walked without recursion, so a deeply nested file cannot overflow the stack."""
    pending, seen = [(value, field, 0)], 0
    while pending:
        item, label, depth = pending.pop()
        seen += 1
        if seen > MAX_ITEMS:
            raise AgeCliError(f"{where}: {field} holds more than {MAX_ITEMS} values")
        if depth > MAX_DEPTH:
            raise AgeCliError(f"{where}: {label} is nested more than {MAX_DEPTH} levels deep")
        if isinstance(item, Mapping):
            for key, child in item.items():
                if not isinstance(key, str):
                    raise AgeCliError(f"{where}: {label} has a key that is not text ({type_name(key)})")
                pending.append((child, f"{label}.{key}", depth + 1))
        elif isinstance(item, (list, tuple)):
            pending.extend((child, f"{label}[{i}]", depth + 1) for i, child in enumerate(item))
        elif not (item is None or isinstance(item, (bool, int, float, str))):
            raise AgeCliError(f"{where}: {label} must be plain data, got {type_name(item)}")


def check_model_spec(spec: Any, where: str) -> tuple[str, dict]:
    """(name, kwargs) of a stored `model` field, with an ensemble's members, views and sizes bounded."""
    if not isinstance(spec, Mapping):
        raise AgeCliError(f"{where}: model must be a mapping {{name, kwargs}}, got {type_name(spec)}")
    name, kwargs = spec.get("name"), spec.get("kwargs", {})
    if not isinstance(name, str) or not name:
        raise AgeCliError(f"{where}: model.name must be a model name, got {type_name(name)}")
    if kwargs is None:
        kwargs = {}
    if not isinstance(kwargs, Mapping):
        raise AgeCliError(f"{where}: model.kwargs must be a mapping of arguments, got {type_name(kwargs)}")
    if name == "ensemble":  # first: its member count is the field to name, not the values it adds up to
        check_ensemble_kwargs(kwargs, where)
    check_plain_data(kwargs, "model.kwargs", where)
    return name, dict(kwargs)


def check_ensemble_kwargs(kwargs: Mapping, where: str) -> None:
    members, shifts = kwargs.get("members"), kwargs.get("shifts")
    if not isinstance(members, list) or not members:
        raise AgeCliError(f"{where}: model.kwargs.members must be a list of at least one member")
    if len(members) > MAX_MEMBERS:
        raise AgeCliError(f"{where}: model.kwargs.members lists {len(members)} members, at most {MAX_MEMBERS}")
    for i, member in enumerate(members):
        label = f"model.kwargs.members[{i}]"
        if not isinstance(member, Mapping):
            raise AgeCliError(f"{where}: {label} must be a mapping {{name, kwargs, size}}, got {type_name(member)}")
        if member.get("name") == "ensemble":
            raise AgeCliError(f"{where}: {label}.name: an ensemble's members cannot be ensembles themselves")
        check_model_spec(member, where)
        for key in ("size", "resize"):
            if key in member:
                check_side(member[key], f"{label}.{key}", where, allow_zero=True)
    if shifts is not None:
        if not isinstance(shifts, list) or len(shifts) > MAX_VIEWS:
            raise AgeCliError(f"{where}: model.kwargs.shifts must be a list of at most {MAX_VIEWS} [dy, dx] pairs")
        for i, pair in enumerate(shifts):
            if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(is_int(v) and abs(v) <= MAX_SIDE
                                                                                for v in pair)):
                raise AgeCliError(f"{where}: model.kwargs.shifts[{i}] must be a pair of integers [dy, dx], got "
                                  f"{pair!r:.40}")

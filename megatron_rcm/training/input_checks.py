"""Checks of the trainer's inputs that need no process group, run before anything is built: the
YAML values' types, the teacher folder, the negative-prompt embedding, the save folder. Each
raises ``ValueError`` with one line that says what to change (``arguments`` reports it)."""

import argparse
import json
import os
from pathlib import Path

from ..atomic_output import nearest_existing


def _kind(action):
    if isinstance(action, argparse.BooleanOptionalAction):
        return "true or false", lambda v: isinstance(v, bool)
    number = {int: ("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)),
              float: ("a number", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool))}
    kind, ok = number.get(action.type, ("a string", lambda v: isinstance(v, str)))
    if action.nargs == "+":
        return f"a list of {kind.split(' ', 1)[1]}s", lambda v: isinstance(v, list) and v and all(map(ok, v))
    return kind, ok


def check_yaml_values(values, actions, path):
    """``values`` (YAML key -> value) against the flags' types and choices: argparse converts
    command-line strings, but a YAML value reaches the config as YAML typed it."""
    by_dest = {a.dest: a for a in actions}
    for key, value in values.items():
        action = by_dest[key]
        kind, ok = _kind(action)
        if value is not None and not ok(value):
            raise ValueError(f"{path}: {key} must be {kind}, got {value!r}")
        if action.choices is not None and value not in action.choices:
            raise ValueError(f"{path}: {key} must be one of {sorted(action.choices)}, got {value!r}")


def read_teacher_config(path):
    """The teacher's diffusers config.json (``path/config.json`` or ``path/transformer/config.json``)
    or None for another format; its safetensors headers must be readable."""
    from ..convert.tensor_files import CheckpointFileError, TensorReader
    from ..models import family_of_diffusers

    for folder in (os.path.join(path, "transformer"), path):
        candidate = os.path.join(folder, "config.json")
        if not os.path.isfile(candidate):
            continue
        try:
            with open(candidate) as f:
                config = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"teacher {candidate} is not valid JSON ({e})") from e
        family_of_diffusers(config.get("_class_name"))  # ValueError naming the class and the supported ones
        try:
            TensorReader(folder)
        except CheckpointFileError as e:
            raise ValueError(f"teacher: {e}") from e
        return config
    return None


def check_negative_embedding(path, text_dim):
    """A 2-D tensor [L, text_dim] that loads with weights_only=True."""
    from ..convert.tensor_files import CheckpointFileError, load_torch_file

    if not os.path.isfile(path):
        raise ValueError(f"--negative-prompt-embedding {path} does not exist")
    try:
        embedding = load_torch_file(path)
    except CheckpointFileError as e:
        raise ValueError(f"--negative-prompt-embedding {e}") from e
    shape = getattr(embedding, "shape", type(embedding).__name__)
    if getattr(embedding, "dim", lambda: 0)() != 2 or (text_dim is not None and shape[1] != text_dim):
        raise ValueError(f"--negative-prompt-embedding {path} must be a tensor [L, {text_dim or 'text_dim'}], "
                         f"got {tuple(shape) if not isinstance(shape, str) else shape}")


def check_output_path(flag: str, path: str, folder: bool):
    """``path`` (a folder where ``folder``, else a file) can be written by this run: a mistake found
    here costs nothing, one found at the first save or log line costs the iterations before it."""
    kind = "folder" if folder else "file"
    if os.path.exists(path) and os.path.isdir(path) != folder:
        raise ValueError(f"{flag} {path} exists and is not a {kind}; name a {kind}")
    existing = nearest_existing(path)
    if not existing.is_dir() and existing != Path(path):
        raise ValueError(f"{flag} {path}: {existing} is a file, not a folder")
    if not os.access(existing if existing.is_dir() else existing.parent, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path}: no permission to write in {existing}; choose a {kind} you can write")

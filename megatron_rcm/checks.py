"""Range checks of config values: one ValueError that names the field, the range and the value.
nan passes every comparison-based check (``nan < 0`` is False), so each check first asks for a
finite number."""

import math


def check_number(name: str, value, *, above=None, at_least=None, below=None, note: str = ""):
    """Raise ValueError unless ``value`` is a finite number, > ``above``, >= ``at_least`` and
    < ``below`` (each where given); ``note`` ends the message (what a value means)."""
    bounds = [f"{sign} {bound:g}" for sign, bound in ((">", above), (">=", at_least), ("<", below)) if bound is not None]
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
          and (above is None or value > above) and (at_least is None or value >= at_least)
          and (below is None or value < below))
    if not ok:
        wanted = " and ".join(bounds) if bounds else "a finite number"
        raise ValueError(f"{name} must be {wanted}{note}, got {value}")

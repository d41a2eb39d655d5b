"""Hypothesis settings and the JSON-value strategy the fuzz tests share.

``USERLAYER_FUZZ_EXAMPLES`` sets the cases per property (300 in ``make
test``; ``make fuzz`` runs 10,000).
"""

from __future__ import annotations

import os
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

EXAMPLES = int(os.environ.get("USERLAYER_FUZZ_EXAMPLES", "300"))


def fuzz_settings(*suppress: HealthCheck) -> settings:
    """``EXAMPLES`` cases, no deadline, slow-case health check off (plus ``suppress``)."""
    return settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, *suppress],
    )


def json_values(text_size: int, key_size: int, max_leaves: int) -> st.SearchStrategy[Any]:
    """Nested lists and objects of JSON scalars.

    No subnormal floats: other tests set ``torch.set_flush_denormal(True)`` in
    the same process.
    """
    scalar = (
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_subnormal=False)
        | st.text(max_size=text_size)
    )
    return st.recursive(
        scalar,
        lambda inner: (
            st.lists(inner, max_size=4)
            | st.dictionaries(st.text(max_size=key_size), inner, max_size=4)
        ),
        max_leaves=max_leaves,
    )

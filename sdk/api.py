"""Wire contracts of the inference API (shared by the server and the SDK client).

Bodies are strict (unknown fields are refused) and bounded: ``k`` at most
:data:`MAX_K`, a session of at most :data:`MAX_SESSION` items, at most
:data:`MAX_EXCLUDE` excluded items.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from userlayer.sdk.schemas import Context, Service

__all__ = [
    "MAX_CRITIQUE",
    "MAX_EXCLUDE",
    "MAX_K",
    "MAX_SESSION",
    "AdapterMetadata",
    "CritiqueResult",
    "ErrorBody",
    "ForgetResponse",
    "Health",
    "RecommendRequest",
    "RecommendResponse",
    "RecommendedItem",
    "RevokeResponse",
    "SignerRequest",
    "SignerResponse",
    "SignersResponse",
]

MAX_K = 100
MAX_SESSION = 50
MAX_EXCLUDE = 500
MAX_CRITIQUE = 200  # characters (userlayer.sdk.critique)
ID_PATTERN = r"^[A-Za-z0-9_.:\-]{1,128}$"
ItemId = Annotated[str, Field(pattern=ID_PATTERN)]


class _Body(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ErrorBody(_Body):
    """Every error answer: a message that says what is wrong (a list for body validation)."""

    detail: str | list[dict[str, Any]]


class RecommendRequest(_Body):
    """Ask for the next items of one user in one context."""

    user_id: str = Field(pattern=ID_PATTERN)
    service: Service
    context: Context = Field(default_factory=Context)
    session: list[ItemId] = Field(
        default_factory=list, max_length=MAX_SESSION, description="current session, oldest first"
    )
    k: int = Field(default=10, ge=1, le=MAX_K)
    exclude: list[ItemId] = Field(default_factory=list, max_length=MAX_EXCLUDE)
    critique: str | None = Field(
        default=None,
        max_length=MAX_CRITIQUE,
        description=(
            "the user's short reaction in Russian or English ('подешевле', 'без мяса', "
            "'another brand'): hard constraints no returned item violates, soft steers; "
            "relative to the session's last item"
        ),
    )


class CritiqueResult(_Body):
    """How a request's critique was understood and applied."""

    language: str = Field(description="ru, en or unknown")
    applied: list[str] = Field(default_factory=list, description="hard constraints applied")
    steer: list[str] = Field(
        default_factory=list,
        description="soft preferences applied: lexicon steers (healthier, kids, bigger, "
        "smaller), and 'learned steer' when the trained steer read the critique's text",
    )
    flags: list[str] = Field(default_factory=list, description="what was ignored, and why")


class RecommendedItem(_Body):
    """One recommended item and its score.

    The score is the item's log-probability under the model (plus a
    critique's steer) for the ``beam``, ``dense`` and ``beam+dense``
    rankings, and a sum of reciprocal ranks under ``fused``: compare scores
    within one response only.
    """

    item_id: str
    score: float


class RecommendResponse(_Body):
    """The items, and whether the user's own adapter produced them."""

    user_id: str
    service: Service
    items: list[RecommendedItem]
    personalized: bool
    reason: str | None = Field(default=None, description="why not personalized")
    adapter_version: int | None = None
    model_fingerprint: str
    backend: str
    latency_ms: float
    ignored_items: list[str] = Field(default_factory=list, description="unknown session items")
    critique: CritiqueResult | None = None


class AdapterMetadata(_Body):
    """What the registry knows of a user's newest adapter (never its tensors)."""

    service: str
    user_id: str
    version: int
    signer: str
    base_fingerprint: str
    created: str
    stored: str
    size: int
    sha256: str
    privacy: dict[str, float | int | str] | None


ENDORSEMENT = r"^[0-9a-f]{128}$"


class SignerRequest(_Body):
    """Enroll a user's Ed25519 public key (32 bytes, hex) as a signer of their adapters.

    A user who has a signer already needs ``endorsement``: an existing signer's
    Ed25519 signature (hex) over ``userlayer.sdk.signers.enrollment_message``
    (or an admin key).
    """

    public_key: str = Field(pattern=r"^[0-9a-f]{64}$")
    endorsement: str | None = Field(default=None, pattern=ENDORSEMENT)


class SignerResponse(_Body):
    """The enrolled key's id."""

    key_id: str


class SignersResponse(_Body):
    """The key ids of a user's signers."""

    user_id: str
    service: Service
    key_ids: list[str]


class RevokeResponse(_Body):
    """Whether the key was a signer of the user (it is not any more)."""

    key_id: str
    revoked: bool


class ForgetResponse(_Body):
    """What a deletion removed."""

    user_id: str
    service: Service
    deleted_versions: int


class Health(_Body):
    """Liveness/readiness."""

    status: str
    checks: dict[str, str] = Field(default_factory=dict)

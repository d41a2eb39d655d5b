"""``EdgeNode``: the facade a service backend or a device embeds.

::

    # least privilege: one tenant key per service (upload + delete scopes of that service)
    node = EdgeNode("/var/lib/userlayer", model_dir, clients={"samokat": Client(url, key)})
    node.record(event)                 # encrypted at rest, never uploaded
    node.train("u42")                  # DP-SGD under the user's budget, here
    node.upload("u42")                 # only the signed adapter leaves
    node.privacy_report("u42")         # epsilon spent per event, budget left, last training
    node.explain("u42", recs.items, "samokat", ctx)  # why each item, from local data only
    node.set_consent("u42", {"megamarket": ["megamarket"]})  # cross-service consent
    node.forget("u42")                 # local store, ledger, key, and the cloud

A node directory holds ``store.db`` (+ its key file) and ``ledger.db``; a
service backend passes its own ``ProfileStore`` instead (PostgreSQL).
Each user's Ed25519 signing key and adapter version live in the store,
encrypted under the user's data key (no user id appears in a file name).
The base model is read from ``model_dir`` (weights, config, ``sids.json``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from userlayer.edge.consent import SETTING, Consent
from userlayer.edge.exceptions import EdgeError
from userlayer.edge.explain import ExplainConfig, Explainer, Explanation
from userlayer.edge.local import ALL_SERVICES, LocalResult, LocalTrainConfig, train_and_seal
from userlayer.edge.privacy import PrivacyLedger
from userlayer.edge.store import ProfileStore
from userlayer.sdk.api import ID_PATTERN
from userlayer.sdk.client import AuthError, Client, NotFoundError, UnavailableError
from userlayer.sdk.model.config import AdapterConfig
from userlayer.sdk.model.io import fingerprint, load_model
from userlayer.sdk.model.transformer import new_adapter
from userlayer.sdk.privacy import DEFAULT_ACCOUNTANT, library
from userlayer.sdk.schemas import Context, Event, Service
from userlayer.sdk.semantic_ids import SemanticIdTable

__all__ = ["EdgeNode", "PrivacyReport"]

_VERSION = "adapter_version"


def _check_user(user_id: str) -> None:
    """User ids follow the API's pattern (they reach URLs and the cloud's records).

    Raises:
        EdgeError: naming the bad id.
    """
    if not isinstance(user_id, str) or not re.fullmatch(ID_PATTERN, user_id) or len(user_id) > 128:
        raise EdgeError(f"user id {user_id!r} does not match {ID_PATTERN} (at most 128 chars)")


@dataclass(frozen=True)
class PrivacyReport:
    """Where a user's privacy budget stands (epsilon per event of the user)."""

    user_id: str
    epsilon_spent: float
    budget: float
    remaining: float
    delta: float
    accountant: str
    trainings: int
    last_training: str | None
    unit: str = "event"
    epsilon_spent_rdp: float | None = None  # the same releases under the RDP accountant


@dataclass
class _Trained:
    result: LocalResult
    version: int
    uploaded: dict[str, int] = field(default_factory=dict)


class EdgeNode:
    """Record, train, upload and forget on the machine that holds the users' data."""

    def __init__(
        self,
        workdir: str | Path,
        model_dir: str | Path,
        client: Client | None = None,
        train: LocalTrainConfig | None = None,
        adapter: AdapterConfig | None = None,
        budget: float = 8.0,
        delta: float = 1e-5,
        accountant: str = DEFAULT_ACCOUNTANT,
        clients: Mapping[str, Client] | None = None,
        store: ProfileStore | None = None,
    ) -> None:
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        torch.set_flush_denormal(True)
        self.model = load_model(model_dir)
        self.fingerprint = fingerprint(self.model)
        self.table = SemanticIdTable.load(Path(model_dir) / "sids.json")
        self.acfg = adapter or AdapterConfig()
        self.train_cfg = train or LocalTrainConfig()
        # a service backend passes its shared store (PostgreSQL); default a file here
        self.store = store if store is not None else ProfileStore(self.dir / "store.db")
        self.ledger = PrivacyLedger(
            self.dir / "ledger.db",
            self.store.ledger_key,  # re-read when another instance re-keyed it
            budget=budget,
            delta=delta,
            accountant=accountant,
        )
        self.client = client
        self.clients = dict(clients or {})
        # the services its users are customers of (public to each service): one adapter
        # package for each, whatever events the user happens to have
        self.services = tuple(sorted(self.clients)) if self.clients else ALL_SERVICES
        self._trained: dict[str, _Trained] = {}

    # -- data

    def record(self, *events: Event) -> int:
        """Append events to the encrypted store; returns how many."""
        return self.store.append(list(events))

    # -- keys and versions

    def _key(self, user_id: str) -> Ed25519PrivateKey:
        key = self.store.signing_key(user_id)
        assert key is not None
        return key

    def _version(self, user_id: str) -> int:
        doc = self.store.setting(user_id, _VERSION)
        return int(doc["version"]) if doc else 0  # type: ignore[call-overload]

    # -- training

    def train(self, user_id: str, now: datetime | None = None) -> dict[str, Any]:
        """Train the user's adapter here, under their privacy budget.

        Raises:
            TrainingError: too few events; BudgetExceededError: the budget is spent
            (nothing changes then).
        """
        events = self.store.events(user_id)  # decrypted in memory only
        _check_user(user_id)
        init = new_adapter(self.model.cfg, self.acfg, torch.Generator().manual_seed(0))
        version = self._version(user_id) + 1
        res = train_and_seal(
            self.model,
            self.table,
            self.acfg,
            events,
            init,
            self.train_cfg,
            self.ledger,
            user_id,
            version,
            self.fingerprint,
            self._key(user_id),
            now=now,
            consent=self.consent(user_id),
            services=self.services,
        )
        self.store.set_setting(user_id, _VERSION, {"version": version})
        self._trained[user_id] = _Trained(res, version)
        return {"version": version, "services": sorted(res.packages), **res.metrics, **res.local}

    def _client(self, service: str) -> Client | None:
        """The client of ``service``'s tenant key (else the one shared client, if any)."""
        return self.clients.get(service, self.client)

    def upload(self, user_id: str) -> dict[str, int]:
        """Enroll the user's key and upload the last trained adapter to each of their services.

        Each service's package goes through that service's client. Returns
        service -> stored version.

        Raises:
            EdgeError: no client for one of the services, or nothing trained since this
                node started.
        """
        t = self._trained.get(user_id)
        if t is None:
            raise EdgeError(f"nothing trained for {user_id} to upload: call train() first")
        pub = (
            self._key(user_id)
            .public_key()
            .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        )
        missing = sorted(s for s in t.result.packages if self._client(s) is None)
        if missing:
            raise EdgeError(f"this EdgeNode has no API client for {missing} to upload with")
        for service, package in t.result.packages.items():
            client = self._client(service)
            assert client is not None
            client.enroll_signer(user_id, pub, service)
            t.uploaded[service] = client.upload_adapter(user_id, package, service).version
        return dict(t.uploaded)

    # -- explanations

    def explain(
        self,
        user_id: str,
        items: Sequence[str | Any],
        service: Service | str,
        context: Context | None = None,
        now: datetime | None = None,
        language: str | None = None,
        titles: Mapping[str, str] | None = None,
        config: ExplainConfig | None = None,
    ) -> list[Explanation]:
        """Why each recommended item suits this user, from their own history (made here).

        ``items``: item ids or the API's recommendation objects (anything with
        ``item_id``), as returned for ``service``; ``context``: the request's
        context; ``titles``: catalog titles for the narrative (else ids);
        ``language``: ``ru`` or ``en`` (default: ``config``'s, else ``ru``).
        The local model is the base with the layer this node trained for
        ``service`` (else the base alone), and the history is the events the
        user's consent lets shape ``service``. This is the user's whole recent
        history, not the private session the cloud scored: the explanation
        says why the item suits the user, from what only the edge holds.
        Nothing is sent anywhere: the
        attribution runs on the decrypted history in memory, and neither the
        narrative nor its evidence leaves this machine.

        Raises:
            EdgeError: a bad user id; ExplainError: an item the catalog does not
                know or an unknown language.
        """
        _check_user(user_id)
        ids = [i if isinstance(i, str) else str(i.item_id) for i in items]
        svc = Service(service).value
        trained = self._trained.get(user_id)
        # the layer made for this service (its consent group's), never another group's
        adapter = None if trained is None else trained.result.adapters.get(svc)
        cfg = config or ExplainConfig(language=language or ExplainConfig().language)
        xp = Explainer(self.model, self.table, adapter, self.acfg, cfg)
        # only the events the user lets shape this service's recommendations
        events = self.store.events(user_id, services=self.consent(user_id).allowed(svc))
        return xp.explain(events, svc, ids, context, now, titles, language or cfg.language)

    # -- privacy

    def set_consent(self, user_id: str, sources: dict[str, list[str]] | Consent) -> Consent:
        """Set which services' events may shape which service's adapter (see ``edge.consent``).

        Raises:
            EdgeError: on an unknown service name (nothing is stored then).
        """
        consent = (
            sources
            if isinstance(sources, Consent)
            else Consent({k: tuple(v) for k, v in sources.items()})
        )
        self.store.set_setting(user_id, SETTING, consent.to_dict())
        return consent

    def consent(self, user_id: str) -> Consent:
        """The user's cross-service consent (default: every service may shape every adapter)."""
        return Consent.from_dict(self.store.setting(user_id, SETTING))

    def privacy_report(self, user_id: str, now: datetime | None = None) -> PrivacyReport:
        """Epsilon spent per event in the accounting window, the budget left, the last training.

        The epsilon is given by the ledger's accountant and, for comparison, by RDP.
        """
        entries = self.ledger.entries(user_id)
        now = now or datetime.now(UTC)
        spent = self.ledger.spent(user_id, now)
        last = entries[-1] if entries else None
        return PrivacyReport(
            user_id=user_id,
            epsilon_spent=spent,
            budget=self.ledger.budget,
            remaining=max(0.0, self.ledger.budget - spent),
            delta=self.ledger.delta,
            accountant=f"{self.ledger.accountant} ({library()})",
            trainings=len(entries),
            last_training=None if last is None else last.time.isoformat(),
            epsilon_spent_rdp=self.ledger.spent(user_id, now, accountant="rdp"),
        )

    # -- forgetting

    def forget(self, user_id: str, services: tuple[str, ...] = ()) -> dict[str, Any]:
        """Forget the user here (events, ledger, key) and in the cloud (each service).

        ``services``: where to forget them in the cloud (default: those their
        events were in, read before the local data is erased). Each service is
        asked through its own client; what a key may not delete (or no client
        reaches) is listed under ``cloud_not_deleted`` with the reason, and the
        local erasure happens regardless.
        """
        svcs = set(services) or {e.service.value for e in self.store.events(user_id)}
        cloud: dict[str, int] = {}
        refused: dict[str, str] = {}
        for s in sorted(svcs):
            client = self._client(s)
            if client is None:
                refused[s] = "no API client for this service"
                continue
            try:
                cloud[s] = client.forget(user_id, s).deleted_versions
            except NotFoundError:
                cloud[s] = 0
            except (AuthError, UnavailableError) as e:
                refused[s] = str(e)
        report = self.store.forget(user_id)  # with their signing key and version
        self.ledger.forget(user_id)
        # a new pseudonym key: an old copy of the ledger cannot be searched for this user
        self.ledger.rekey(self.store.users(), self.store.replace_ledger_key())
        self._trained.pop(user_id, None)
        local = {"events_deleted": report.events_deleted, "kek_rotated": report.kek_rotated}
        return {"local": local, "cloud": cloud, "cloud_not_deleted": refused}

    def close(self) -> None:
        """Close the store and the ledger."""
        self.store.close()
        self.ledger.close()

r"""A service backend: record events on the edge, train and upload, ask for recommendations.

Least privilege: Samokat's backend holds a Samokat tenant key only (it can
recommend, upload and delete for Samokat's users, nothing else). After
`userlayer demo --quick --out artifacts/demo` (which stops its API when done):

    userlayer keys create --tenant samokat --scopes recommend,upload,delete --file keys.json
    USERLAYER_API_KEYS_FILE=keys.json userlayer serve \\
        --model artifacts/demo/model --registry artifacts/demo/fl/registry/registry.db

then `USERLAYER_URL=http://127.0.0.1:8000 USERLAYER_SAMOKAT_KEY=<that key> python \
examples/service_backend.py`.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

from userlayer.edge.local import LocalTrainConfig
from userlayer.edge.node import EdgeNode
from userlayer.sdk.client import Client
from userlayer.sdk.schemas import Action, Context, Event, Mode, Service
from userlayer.sdk.semantic_ids import SemanticIdTable

MODEL = os.environ.get("USERLAYER_MODEL_DIR", "artifacts/demo/model")
client = Client(
    os.environ.get("USERLAYER_URL", "http://127.0.0.1:8000"), os.environ["USERLAYER_SAMOKAT_KEY"]
)
items = [
    i
    for i, s in SemanticIdTable.load(f"{MODEL}/sids.json").services.items()
    if s is Service.SAMOKAT
]

# 1. the backend records what the user does; events stay encrypted on this machine
node = EdgeNode(
    "artifacts/example-node",
    MODEL,
    train=LocalTrainConfig(epochs=4, epsilon=2.0),
    clients={"samokat": client},  # one tenant key per service this backend runs
)
t0 = datetime.now(UTC) - timedelta(days=60)
events = [
    Event(
        user_id="alice",
        service=Service.SAMOKAT,
        item_id=items[(7 * i) % len(items)],
        action=Action.PURCHASE,
        timestamp=t0 + timedelta(hours=13 * i),
        context=Context.from_timestamp(t0 + timedelta(hours=13 * i)),
    )
    for i in range(80)
]
node.record(*events)

# 2. train alice's adapter here under DP, upload only the signed adapter
print("trained:", node.train("alice"))
print("uploaded:", node.upload("alice"))
print("privacy:", node.privacy_report("alice"))

# 3. ask the cloud for recommendations in the current context
r = client.recommend(
    "alice", "samokat", session=[e.item_id for e in events[-2:]], context=Context(mode=Mode.HUNGRY)
)
print("personalized:", r.personalized, "version:", r.adapter_version)
for it in r.items:
    print(f"  {it.item_id}  {it.score:.3f}")

# 4. the user says "cheaper, no meat": hard constraints no returned item breaks
r2 = client.recommend(
    "alice", "samokat", session=[e.item_id for e in events[-2:]], critique="подешевле, без мяса"
)
print("critique understood as:", r2.critique)
for it in r2.items[:3]:
    print(f"  {it.item_id}  {it.score:.3f}")

# 5. why these items? made here from alice's own history; nothing of it is sent anywhere
for e in node.explain("alice", r.items[:3], "samokat", Context(mode=Mode.HUNGRY)):
    print(" ", e.text)

# 6. erasure: here and in Samokat's cloud records; what this key may not delete is listed
print("forgotten:", node.forget("alice"))

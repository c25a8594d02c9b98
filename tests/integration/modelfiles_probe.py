"""Run a deploy's model-files step (``deploy/modelfiles.py``) as the controller does, in a
process of its own whose environment (``HF_ENDPOINT``, ``HF_HOME``) the test sets, and
print what happened as one JSON document.

``python -m tests.integration.modelfiles_probe REPO JOURNAL [--pull]``
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
import sys
from typing import Any

from labctl.config import DeploymentSpec, ModelsConfig
from labctl.deploy.journal import Journal
from labctl.deploy.modelfiles import ModelFiles
from labctl.engines import adapter
from labctl.errors import DeployError


async def probe(repo: str, journal_path: Path, allow_pull: bool) -> dict[str, Any]:
    journal = Journal(journal_path)
    events: list[dict[str, Any]] = []
    files = ModelFiles(journal, lambda name, doc: events.append({"deployment": name, **doc}),
                       ModelsConfig(pull=allow_pull))  # fmt: skip
    spec = DeploymentSpec.from_dict("chat", {"engine": "vllm", "model": repo})
    deploy_id = journal.begin("chat", "deploy", None, 1)
    error = None
    try:
        await files.prepare(spec, deploy_id)
    except DeployError as exc:
        error = str(exc)
    record = journal.record(deploy_id)
    assert record is not None
    env = adapter("vllm").launch(spec.to_dict(), "127.0.0.1", 9000, [0]).env
    steps = [{k: s[k] for k in ("name", "outcome", "error", "detail")} for s in record["steps"]]
    return {"error": error, "steps": steps, "events": events, "env": env}


if __name__ == "__main__":
    doc = asyncio.run(probe(sys.argv[1], Path(sys.argv[2]), "--pull" in sys.argv[3:]))
    print(json.dumps(doc))

"""Serving commands of the ``userlayer`` CLI: ``export``, ``serve``, ``keys create``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from userlayer.tools.exceptions import ToolsError

__all__ = ["register"]

console = Console()


def register(app: typer.Typer) -> None:
    """Add the serving commands to ``app``."""
    keys_app = typer.Typer(help="API keys of the inference API.", no_args_is_help=True)
    app.add_typer(keys_app, name="keys")
    registry_app = typer.Typer(help="The adapter registry.", no_args_is_help=True)
    app.add_typer(registry_app, name="registry")

    @registry_app.command("import")
    def registry_import(
        rounds: Annotated[Path, typer.Option(help="Federated work directory (registry/, trust/).")],
        registry: Annotated[str, typer.Option(help="SQLite file or postgresql:// DSN.")],
        model: Annotated[Path, typer.Option(help="The served base model directory.")],
    ) -> None:
        """Adopt the adapters federated rounds wrote into the serving registry (verified)."""
        from userlayer.cloud.registry import AdapterRegistry, import_rounds
        from userlayer.sdk.model import AdapterConfig, adapter_shapes
        from userlayer.sdk.model.io import load_model

        base = load_model(model)
        setup = json.loads((rounds / "fl.json").read_text("utf-8"))
        shapes = adapter_shapes(base.cfg, AdapterConfig.from_dict(setup["adapter"]))
        from userlayer.sdk.model.io import fingerprint

        reg = AdapterRegistry(registry, fingerprint(base), shapes)
        counts = import_rounds(reg, rounds / "registry", rounds / "trust")
        console.print(f"imported into {registry}: {counts}")

    @app.command("export")
    def export_cmd(
        model: Annotated[Path, typer.Option(help="Base model directory.")],
        backend: Annotated[str, typer.Option(help="onnx | tensorrt")] = "onnx",
        out: Annotated[Path | None, typer.Option(help="Output (default: MODEL/onnx).")] = None,
        adapter_config: Annotated[
            Path | None, typer.Option(help="Adapter config JSON (default: the standard one).")
        ] = None,
    ) -> None:
        """Export the base with per-row adapter inputs (ONNX; TensorRT engines on a GPU)."""
        from userlayer.cloud.engine.backends import tensorrt_available
        from userlayer.cloud.engine.export import export_onnx
        from userlayer.sdk.model import AdapterConfig

        if backend not in ("onnx", "tensorrt"):
            raise ToolsError(f"--backend should be onnx or tensorrt, got {backend!r}")
        if backend == "tensorrt":
            why = tensorrt_available()
            raise ToolsError(f"tensorrt: {why or 'engine building is not implemented yet'}")
        acfg = None
        if adapter_config is not None:
            acfg = AdapterConfig.from_dict(json.loads(adapter_config.read_text("utf-8")))
        target = out or model / "onnx"
        m = export_onnx(model, target, acfg)
        sizes = {p.name: p.stat().st_size for p in sorted(target.glob("*.onnx"))}
        console.print(f"exported base {m['fingerprint']} (opset {m['opset']}) to {target}: {sizes}")

    @app.command("serve")
    def serve_cmd(
        model: Annotated[Path, typer.Option(help="Base model directory.")],
        registry: Annotated[str, typer.Option(help="SQLite file or postgresql:// DSN.")],
        host: Annotated[str, typer.Option()] = "127.0.0.1",
        port: Annotated[int, typer.Option()] = 8000,
        backend: Annotated[str, typer.Option(help="onnxruntime | torch | tensorrt")] = "",
    ) -> None:
        """Run the inference API (settings from USERLAYER_* variables; these options win)."""
        import uvicorn

        from userlayer.cloud.api import create_app
        from userlayer.cloud.settings import Settings

        over: dict[str, object] = {"model_dir": model, "registry": registry}
        if backend:
            over["backend"] = backend
        from pydantic import ValidationError

        from userlayer.sdk.schemas import describe_validation_error

        try:
            settings = Settings(**over)  # type: ignore[arg-type]
        except ValidationError as e:
            raise ToolsError(describe_validation_error(e, "settings")) from e
        # keep-alive longer than a busy client's idle gaps: with uvicorn's 5 s a
        # pooled connection could be closed just as a client reused it (a lost request)
        uvicorn.run(
            create_app(settings),
            host=host,
            port=port,
            log_level="warning",
            timeout_keep_alive=settings.keep_alive_s,
        )

    @keys_app.command("create")
    def keys_create(
        tenant: Annotated[str, typer.Option(help="samokat | megamarket | kuper | admin")],
        scopes: Annotated[str, typer.Option(help="comma list of recommend,upload,delete,admin")],
        file: Annotated[
            Path,
            typer.Option(
                help="The hashed key file (created 0600).", envvar="USERLAYER_API_KEYS_FILE"
            ),
        ] = Path("api-keys.json"),
    ) -> None:
        """Create an API key; prints it once (only its hash is stored)."""
        from userlayer.cloud.auth import KeyStore

        key = KeyStore(path=file).add(tenant, tuple(s for s in scopes.split(",") if s))
        console.print(key, soft_wrap=True, highlight=False)

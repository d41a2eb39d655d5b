"""Serving commands of the ``userlayer`` CLI: ``export``, ``serve``, ``keys create|init-kek``."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from userlayer.tools.exceptions import ToolsError

if TYPE_CHECKING:
    from userlayer.cloud.settings import Settings

__all__ = ["register"]

console = Console()


def _run_api(settings: Settings, host: str, port: int) -> None:
    """uvicorn: one app in this process, or ``settings.workers`` worker processes."""
    import uvicorn

    # keep-alive longer than a busy client's idle gaps: with uvicorn's 5 s a
    # pooled connection could be closed just as a client reused it (a lost request)
    common: dict[str, Any] = {
        "host": host,
        "port": port,
        "log_level": "warning",
        "timeout_keep_alive": settings.keep_alive_s,
    }
    if settings.workers == 1:
        from userlayer.cloud.api import create_app

        uvicorn.run(create_app(settings), **common)
    else:  # workers read the same USERLAYER_* environment; uvicorn restarts a dead one
        factory = "userlayer.cloud.api.app:app_from_env"
        uvicorn.run(factory, factory=True, workers=settings.workers, **common)


def register(app: typer.Typer) -> None:
    """Add the serving commands to ``app``."""
    keys_app = typer.Typer(help="API keys of the inference API.", no_args_is_help=True)
    app.add_typer(keys_app, name="keys")

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
        workers: Annotated[
            int, typer.Option(help="API worker processes (default: USERLAYER_WORKERS or 1).")
        ] = 0,
        engine: Annotated[
            str, typer.Option(help="process (default) | inline: the engine in the API process.")
        ] = "",
    ) -> None:
        """Run the inference API (settings from USERLAYER_* variables; these options win).

        By default one engine core process owns the model and the batch loop and
        ``workers`` uvicorn processes handle HTTP, fed to the core over a Unix
        socket in a private temporary directory; a crashed core is restarted.
        """
        from pydantic import ValidationError

        from userlayer.cloud.settings import Settings
        from userlayer.sdk.schemas import describe_validation_error

        over: dict[str, str] = {"MODEL_DIR": str(model), "REGISTRY": registry}
        for name, value in (("BACKEND", backend), ("ENGINE", engine)):
            if value:
                over[name] = value
        if workers:
            over["WORKERS"] = str(workers)
        os.environ.update({f"USERLAYER_{k}": v for k, v in over.items()})
        os.environ.pop("USERLAYER_ENGINE_SOCKET", None)  # ours is made below
        try:
            settings = Settings()  # type: ignore[call-arg]
        except ValidationError as e:
            raise ToolsError(describe_validation_error(e, "settings")) from e
        if settings.engine == "inline":
            _run_api(settings, host, port)
            return
        from userlayer.cloud.core import EngineProcess
        from userlayer.cloud.exceptions import CloudError

        with tempfile.TemporaryDirectory(prefix="userlayer-engine-") as tmp:  # 0700
            sock = Path(tmp) / "engine.sock"
            with EngineProcess(sock) as core:
                try:
                    core.start(settings.engine_connect_timeout_s)
                except CloudError as e:
                    raise ToolsError(str(e)) from e
                os.environ["USERLAYER_ENGINE_SOCKET"] = str(sock)  # for uvicorn's workers
                _run_api(settings.model_copy(update={"engine_socket": sock}), host, port)

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

    @keys_app.command("init-kek")
    def keys_init_kek(
        file: Annotated[
            Path,
            typer.Option(help="The KEK file to create (0600).", envvar="USERLAYER_KEK_FILE"),
        ],
    ) -> None:
        """Create the registry's key-encryption key file (never overwrites one)."""
        from userlayer.sdk.crypto import init_key_file

        kid = init_key_file(file)
        console.print(f"created {file} (KEK {kid}); mount the same file on every replica")

    @keys_app.command("rotate-registry")
    def keys_rotate_registry(
        registry: Annotated[str, typer.Option(help="SQLite file or postgresql:// DSN.")],
        model: Annotated[Path, typer.Option(help="The served base model directory.")],
        kek_file: Annotated[
            Path | None,
            typer.Option(
                help="The registry's KEK file (default: next to SQLite).",
                envvar="USERLAYER_KEK_FILE",
            ),
        ] = None,
    ) -> None:
        """Re-wrap every user's key under a new KEK and destroy the old ones (run daily).

        Until then, a backup taken before a deletion can still be opened with the KEK.
        """
        from userlayer.cloud.registry import AdapterRegistry
        from userlayer.sdk.crypto import LocalKeyFile
        from userlayer.sdk.model import AdapterConfig, adapter_shapes
        from userlayer.sdk.model.io import fingerprint, load_model

        base = load_model(model)
        keys = None if kek_file is None else LocalKeyFile(kek_file)
        reg = AdapterRegistry(
            registry, fingerprint(base), adapter_shapes(base.cfg, AdapterConfig()), keys=keys
        )
        try:
            kid = reg.rotate_kek(destroy_old=True)
        finally:
            reg.close()
        console.print(f"registry keys re-wrapped under KEK {kid}; older KEKs destroyed")

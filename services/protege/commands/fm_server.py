"""`protege fm-server`: the CPU foundation model behind an OpenAI-compatible
completions endpoint (scoring only), e.g. to try the `openai` backend locally."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "fm-server", help="serve the transformers FM as an OpenAI-compatible API"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--model-name", default="smollm2", help="the `model` clients must ask for")
    parser.add_argument(
        "--vllm-offsets",
        action="store_true",
        help="report a BOS token and vLLM's text offsets (to test clients against them)",
    )
    parser.add_argument(
        "--adapters",
        type=Path,
        help="a folder of fm-adapter folders, each served under its name (TASK@vVERSION)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from protege.foundation.server import adapter_folders, build_fm_server
    from protege.foundation.transformers_backend import TransformersBackend
    from protege.settings import Settings

    backend = TransformersBackend.from_settings(Settings())
    adapters = adapter_folders(args.adapters) if args.adapters else {}
    models = [args.model_name, *adapters]
    print(f"OpenAI-compatible scoring at http://{args.host}:{args.port}/v1 (models {models})")
    app = build_fm_server(backend, args.model_name, args.vllm_offsets, adapters)
    uvicorn.run(app, host=args.host, port=args.port)
    return 0

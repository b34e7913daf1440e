"""Start the GUI: python gui.py [--host 127.0.0.1] [--port 7860] [--no-browser] [--share].

This process never imports torch/diffusers/transformers: training and generation run in
child processes (python -m ti_core ...), so the page stays responsive and cannot crash.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys

DEFAULT_PORT = 7860


def find_free_port(host: str, first: int, tries: int = 50) -> int:
    """The first port from `first` on that nothing listens on, so a second launch still opens."""
    for port in range(first, first + tries):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((host, port))
            except OSError:
                continue
            return port
    raise SystemExit(f"error: no free port in {first}..{first + tries - 1}; pass --port.")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Textual Inversion trainer GUI")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (local only)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="first port to try")
    parser.add_argument("--no-browser", action="store_true", help="do not open a browser tab")
    parser.add_argument("--share", action="store_true", help="make a public gradio.live link")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # Gradio otherwise phones home at start; this tool works offline.
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from ti_gui.app import CSS, build_app

    app = build_app()
    port = find_free_port(args.host, args.port)
    print(f"Textual Inversion trainer GUI: http://{args.host}:{port}", flush=True)
    app.launch(
        server_name=args.host,
        server_port=port,
        inbrowser=not args.no_browser,
        share=args.share,
        ssr_mode=False,
        quiet=True,
        css=CSS,
    )


if __name__ == "__main__":
    sys.exit(main())

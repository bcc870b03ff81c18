"""PLW Lab web app: `python app.py` serves it on http://127.0.0.1:7860.

python app.py                          # local only (127.0.0.1)
python app.py --model tiny-random      # a fast random model, for trying the app out
python app.py --host 0.0.0.0 --port 8080 --runs-dir /data/runs
python app.py --share                  # a public Gradio link (explicit opt-in)
python app.py --allow-local-paths      # a single-user app: settings may name this machine's files
python app.py --set train.max_steps=50 --set lora.r=8
"""

from __future__ import annotations

import argparse
import os


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="PLW Lab: fine-tuning with a visible prompt-loss weight.")
    # A Hugging Face Space sets GRADIO_SERVER_NAME=0.0.0.0; everywhere else the default stays local.
    parser.add_argument(
        "--host",
        default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        help="address to bind (default 127.0.0.1: this machine only)",
    )
    parser.add_argument("--port", type=int, default=7860, help="port to listen on (default 7860)")
    parser.add_argument("--share", action="store_true", help="also serve through a public Gradio share link")
    parser.add_argument("--model", default=None, help="starting model: 'embedded' (default), 'tiny-random' or a folder")
    parser.add_argument(
        "--runs-dir", default=None, help="folder for run outputs (default: the config's train.output_dir)"
    )
    parser.add_argument("--config", default=None, help="a YAML/JSON lab config giving the starting values")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a starting value, e.g. train.prompt_loss_weight=0.1 (repeatable)",
    )
    parser.add_argument("--max-file-size", default="50mb", help="largest upload accepted (default 50mb)")
    parser.add_argument(
        "--allow-remote-code",
        action="store_true",
        help="let runs whose config sets model.trust_remote_code run their model's own Python code "
        "(off: such runs are refused)",
    )
    parser.add_argument(
        "--allow-local-paths",
        action="store_true",
        help="let visitors name files and folders of this machine as data, validation data, mix sources or "
        "model (off: only uploads, built-in sets and hub ids; turn it on only for an app that you alone use)",
    )
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    from plw_lab.app.main import build_app
    from plw_lab.core.config import ConfigError, LabConfig, parse_overrides

    try:
        overrides = parse_overrides(args.set)
        if args.model:
            overrides["model.name"] = args.model
        config = LabConfig.load(args.config) if args.config else LabConfig()
        if overrides:
            config = config.override(overrides)
        demo = build_app(
            config=config,
            runs_dir=args.runs_dir,
            allow_remote_code=args.allow_remote_code,
            allow_local_paths=args.allow_local_paths,
        )
    except (ConfigError, OSError) as exc:
        raise SystemExit(f"error: {exc}") from None
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, max_file_size=args.max_file_size)


if __name__ == "__main__":
    main()

"""`meshgate models list|pull|preset`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from meshgate.catalog.loader import load_catalog_file
from meshgate.catalog.presets import io_intelligence_models, local_default_models
from meshgate.catalog.toml_out import catalog_toml
from meshgate.config import Settings


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.action == "list":
        print("id\tkind\tcontext\tdaily quota")
        for spec in load_catalog_file(args.config) if args.config else local_default_models():
            quota = ", ".join(f"{b}={t}" for b, t in spec.daily_quota.items()) or "-"
            print(f"{spec.id}\t{spec.kind}\t{spec.context_length}\t{quota}")
        return 0
    if args.action == "preset":
        specs = io_intelligence_models(args.upstream) if args.name == "io-intelligence" else local_default_models()
        sys.stdout.write(catalog_toml(specs))
        return 0
    if args.action == "pull":
        from meshgate.engines.pull import main_pull

        dest = Path(args.dest) if args.dest else settings.home / "models"
        return main_pull([args.ref, "--dest", str(dest), *(["--quiet"] if args.quiet else [])])
    raise AssertionError(args.action)

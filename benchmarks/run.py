"""Run every unit benchmark (benchmarks/<unit>.py for each registered unit that has one)."""
import importlib
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from vitaccel import units  # noqa: E402


def main():
    args = sys.argv[1:]
    for name in units.names():
        if (HERE / f"{name}.py").exists():
            print(f"[bench] === {name} ===", file=sys.stderr, flush=True)
            importlib.import_module(name).main(args)


if __name__ == "__main__":
    main()

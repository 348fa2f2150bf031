"""Copy benchmarks/results/*.md into README.md between the results markers (run by `make bench`)."""
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- results -->", "<!-- /results -->"
ORDER = ["gemm", "heatvit", "vitcod", "fact", "vitality"]


def _demote(markdown: str) -> str:
    """Nest a result file's own headings under the README's per-unit heading."""
    return "\n".join("###" + line if line.startswith("#") else line
                     for line in markdown.splitlines())


def main():
    readme = ROOT / "README.md"
    text = readme.read_text()
    if START not in text:
        raise SystemExit(f"README.md has no {START} marker")
    results = ROOT / "benchmarks" / "results"
    names = sorted((p.stem for p in results.glob("*.md")),
                   key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))
    parts = [f"### {name}\n\n{_demote((results / f'{name}.md').read_text().strip())}\n"
             for name in names]
    head, rest = text.split(START, 1)
    tail = rest.split(END, 1)[1] if END in rest else ""
    readme.write_text(head + START + "\n\n" + "\n".join(parts) + "\n" + END + tail)
    print(f"README.md: results of {', '.join(names)}")


if __name__ == "__main__":
    main()

"""Regenerate docs/cli.md from the `age` CLI itself: python scripts/cli_docs.py"""

from agecli.cli.docs import write_cli_docs

if __name__ == "__main__":
    print(f"wrote {write_cli_docs()}")

"""``python -m fprune``: prune the reference MLP and print what changed."""

from ._demo import run_demo

if __name__ == "__main__":
    print(run_demo())

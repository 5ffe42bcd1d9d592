"""`python -m mmjax ...` is the `mmjax` command."""

from mmjax.cli import main

if __name__ == "__main__":
  main()

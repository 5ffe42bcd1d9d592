"""Train and evaluate mmjax from a config file (the same as `mmjax train`).

  python launch.py --config configs/demo.py --workdir runs/demo \
      [--config.train.steps=500 ...] [--verbose]

Running again with the same workdir resumes from its latest checkpoint.
`python launch.py --help` lists the flags; docs/config.md every config key.
"""

import sys

from mmjax.cli import train_main

if __name__ == "__main__":
  train_main(["python launch.py"] + sys.argv[1:])

"""Train and evaluate mmjax from a config file.

  python launch.py --config configs/demo.py --workdir runs/demo \
      [--config.train.steps=500 ...] [--verbose]

Running again with the same workdir resumes from its latest checkpoint.
"""

import sys

from mmjax.cli import train_main

if __name__ == "__main__":
  train_main(sys.argv)

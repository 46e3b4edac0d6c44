"""Reference returns for the Reacher adapter comparison: the expert and a policy that never moves
(zero torque), on the evaluation seeds `omniplug eval --env reacher` uses (100000+).

    python bench/actions/reacher_baselines.py --episodes 50
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from omniplug.envs.rollout import evaluate


class ZeroPolicy:
    def act(self, observations):
        return [np.zeros((1, 2), dtype=np.float32) for _ in observations]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--episodes", type=int, default=50)
    args = parser.parse_args()
    out = {name: evaluate(policy, "reacher", episodes=args.episodes).summary()
           for name, policy in (("expert", "expert"), ("zero_torque", ZeroPolicy()))}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

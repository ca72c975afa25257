"""hydra-optuna-sweeper's multi-objective example (Binh and Korn), unchanged but for the sweeper's name: its
task returns a tuple, one value per direction, and its config picks NSGA-II from the sampler group."""
from typing import Tuple

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path=".", config_name="hos_mo")
def binh_and_korn(cfg: DictConfig) -> Tuple[float, float]:
    x: float = cfg.x
    y: float = cfg.y
    v0 = 4 * x**2 + 4 * y**2
    v1 = (x - 5) ** 2 + (y - 5) ** 2
    return v0, v1


if __name__ == "__main__":
    binh_and_korn()

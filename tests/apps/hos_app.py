"""A hydra-optuna-sweeper user's app, unchanged but for the sweeper's name: its task returns a float."""
import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path=".", config_name="hos_app")
def main(cfg: DictConfig) -> float:
    return (cfg.x - 2) ** 2 + (cfg.y + 1) ** 2


if __name__ == "__main__":
    main()

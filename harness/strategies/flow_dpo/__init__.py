"""Flow-DPO (Deng & Mineiro, 2024, arXiv 2410.22304): an Answer and a Stop adapter write chunk by chunk; a random
rollout at every node makes the DPO pairs."""

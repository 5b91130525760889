"""The experiments beside the engine: run sets and their profiles (sets), running a set (driver)
and its figures and tables (plots), the Slurm launcher, the lottery prior's mask search (imp) and
the classical baselines."""

"""``supersub pretrain``: train a backbone on a class folder (seed 002's binary-partition heads optional)."""

import os
os.environ.setdefault('MPLBACKEND', 'Agg')
os.environ.setdefault('WANDB_MODE', 'disabled')

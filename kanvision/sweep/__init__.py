"""`kanvision sweep`: the grid of runs (`grid`), running or resuming them (`runner`), the results table and plot
(`report`) and SLURM job files (`slurm`)."""

#!/bin/bash

# Parameters
#SBATCH --account=ml
#SBATCH --constraint=fast
#SBATCH --cpus-per-task=2
#SBATCH --error=/runs/demo/slurm/%j_0_log.err
#SBATCH --exclude='node[2-3,7-8]'
#SBATCH --exclusive
#SBATCH --job-name=demo-a1
#SBATCH --mem=4G
#SBATCH --no-requeue
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=2
#SBATCH --open-mode=append
#SBATCH --output=/runs/demo/slurm/%j_0_log.out
#SBATCH --partition=main
#SBATCH --qos=high
#SBATCH --reservation=maint
#SBATCH --signal=USR2@45
#SBATCH --time=00:30:00
#SBATCH --wckey=submitit

# command
export SUBMITIT_EXECUTOR=slurm
srun --unbuffered --output /runs/demo/slurm/%j_%t_log.out --error /runs/demo/slurm/%j_%t_log.err /venv/bin/python -u -m trainer.main

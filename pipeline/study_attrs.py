"""The names under which the tuning study keeps its state in its storage, where every process reads it.

The study database is the only channel between the tune stage, its workers on other machines and a
later run that resumes the study: the objective records a trial's epochs, fold losses and pruning
reason; the scheduler the trial's worker and the study's target; the MLflow logger the parent run.
Other modules read them back (the one-SE rule, the MLflow child runs, the distributed tests). One
list keeps writers and readers agreeing; renaming a value orphans what existing studies recorded.
"""

TARGET_ATTR = "n_trials"  # study: the stage's tune.n_trials, which workers run the study up to
DEADLINE_ATTR = "deadline"  # study: Unix time after which no trial starts (tune.timeout_minutes from the stage's start); None = no budget
PARENT_RUN_ATTR = "mlflow_parent_run_id"  # study: the search's MLflow parent run, created by whichever process came first
WORKER_ATTR = "worker"  # trial: host:pid of the process that ran it
ADMITTED_ATTR = "admitted_as"  # trial: its own number, stamped last when a process takes it (see trial_scheduling)
EPOCHS_RUN_ATTR = "epochs_run"  # trial: epochs trained over its folds so far
FOLD_LOSSES_ATTR = "fold_losses"  # trial: each fold's smoothed best validation loss; tune.select: one_se needs them
PRUNED_BECAUSE_ATTR = "pruned_because"  # trial: why it was stopped; its MLflow run carries it as a tag

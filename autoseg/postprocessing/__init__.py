"""Connected-component postprocessing: determined on cross-validation, replayed at inference."""

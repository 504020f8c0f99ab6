//! Hooks for the fuzz targets (`cfg(fuzzing)` only): decode and route frames without processes.

"""The whole case: orchestration of every stage, the output folder, the report, the phantom comparison."""

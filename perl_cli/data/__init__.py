"""Task data: problem generators, dataset loaders and prompt formats."""

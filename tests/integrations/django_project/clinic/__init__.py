"""The test project's models: registered ones and their unregistered twins."""

"""An example of a project of one's own trained with msam: a model and a data set in its own module."""

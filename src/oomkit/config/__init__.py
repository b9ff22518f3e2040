"""Reading and validating the files users write: scenarios and daemon configs.

Every problem becomes one :class:`~oomkit.errors.ConfigError` line naming the
file, the key (``task[2].rss``) or line, what is wrong and how to fix it.
"""

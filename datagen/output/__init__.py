"""After the stages: the dataset directory (writer), finalize (views, stats, card, report), the report's quality section and charts, the hub upload."""

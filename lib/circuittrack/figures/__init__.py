"""The book's figures and tables: what a chapter reads (source), the look (theme), and one module per chapter
(behaviour, circuits, compare). Notebooks call these; all logic lives here, where it is tested."""

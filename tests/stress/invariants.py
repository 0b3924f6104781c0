"""What must hold in a tree store whatever was killed, and when (issue 16).

`check_store(url)` returns one line per violation (empty: all hold):

- one tree per (run, problem, epoch);
- every tree is complete: its `num_nodes`, `num_leaves`, `num_tokens` (completion tokens: every
  node but the root) and `max_depth` match its stored nodes, and it has exactly one root;
- no orphan nodes: every node's tree exists, every parent index names a node of the same tree;
- a tree marked scored is fully scored: every leaf has a reward, every node a value;
- runs have a known status;
- SQLite: `PRAGMA integrity_check` is ok.

Plain SQL over SQLAlchemy, so the same checks run on SQLite and PostgreSQL.
"""

from __future__ import annotations

from sqlalchemy import create_engine, text

CHECKS = {
    "duplicate trees (run, problem, epoch)": """
        SELECT run_id, problem_id, epoch FROM trees
        GROUP BY run_id, problem_id, epoch HAVING count(*) > 1""",
    "trees whose counts do not match their nodes": """
        SELECT t.id FROM trees t
        LEFT JOIN (
            SELECT tree_id, count(*) AS n,
                   sum(CASE WHEN parent_index IS NULL THEN 0 ELSE num_tokens END) AS tokens,
                   max(depth) AS depth,
                   sum(CASE WHEN parent_index IS NULL THEN 1 ELSE 0 END) AS roots
            FROM nodes GROUP BY tree_id) x ON x.tree_id = t.id
        WHERE x.n IS NULL OR x.n != t.num_nodes OR x.tokens != t.num_tokens
           OR x.depth != t.max_depth OR x.roots != 1""",
    "trees whose leaf count does not match": """
        SELECT t.id FROM trees t
        LEFT JOIN (
            SELECT n.tree_id, count(*) AS leaves FROM nodes n
            WHERE n.parent_index IS NOT NULL AND NOT EXISTS (
                SELECT 1 FROM nodes c
                WHERE c.tree_id = n.tree_id AND c.parent_index = n.node_index)
            GROUP BY n.tree_id) x ON x.tree_id = t.id
        WHERE coalesce(x.leaves, 0) != t.num_leaves""",
    "orphan nodes (no tree)": """
        SELECT n.tree_id, n.node_index FROM nodes n
        WHERE NOT EXISTS (SELECT 1 FROM trees t WHERE t.id = n.tree_id)""",
    "orphan nodes (no parent)": """
        SELECT n.tree_id, n.node_index FROM nodes n
        WHERE n.parent_index IS NOT NULL AND NOT EXISTS (
            SELECT 1 FROM nodes p
            WHERE p.tree_id = n.tree_id AND p.node_index = n.parent_index)""",
    "scored trees with unscored nodes": """
        SELECT DISTINCT t.id FROM trees t JOIN nodes n ON n.tree_id = t.id
        WHERE t.scored AND (n.value IS NULL OR (n.reward IS NULL AND n.parent_index IS NOT NULL
              AND NOT EXISTS (SELECT 1 FROM nodes c WHERE c.tree_id = n.tree_id
                              AND c.parent_index = n.node_index)))""",
    "runs with an unknown status": """
        SELECT id FROM runs WHERE status NOT IN ('running', 'finished', 'failed')""",
}


def check_store(url: str) -> list[str]:
    """One line per violated invariant of the store at `url` (no line: all hold)."""
    engine = create_engine(url)
    violations = []
    try:
        with engine.connect() as connection:
            for name, query in CHECKS.items():
                rows = connection.execute(text(query)).fetchall()
                if rows:
                    violations.append(f"{name}: {len(rows)} (e.g. {tuple(rows[0])})")
            if engine.dialect.name == "sqlite":
                result = [row[0] for row in connection.exec_driver_sql("PRAGMA integrity_check")]
                if result != ["ok"]:
                    violations.append(f"integrity_check: {'; '.join(result[:3])}")
    finally:
        engine.dispose()
    return violations


def trees_per_problem(url: str, *, run: str) -> dict[int, int]:
    """problem id → number of trees the run has for it (epoch 0)."""
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(text(
                "SELECT t.problem_id, count(*) FROM trees t JOIN runs r ON r.id = t.run_id "
                "WHERE r.name = :run AND t.epoch = 0 GROUP BY t.problem_id"), {"run": run})
            return {problem_id: count for problem_id, count in rows}
    finally:
        engine.dispose()

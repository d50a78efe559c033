//! Property: any tree (odd name bytes, empty files, deep nesting, symlinks, hard links,
//! duplicates and near-duplicates, FIFOs) restores exactly as it was.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use chaos::argv;
use chaos::testkit::{assert_same_tree, random_tree, restored_path, Bakare};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]
    #[test]
    fn random_trees_round_trip(seed in any::<u64>(), entries in 1usize..200) {
        let src = tempfile::tempdir().unwrap();
        random_tree(src.path(), seed, entries);
        let b = Bakare::new(env!("CARGO_BIN_EXE_bakare"));
        b.ok(&argv!["init"]);
        b.ok(&argv!["run", src.path()]);
        let target = tempfile::tempdir().unwrap();
        b.ok(&argv!["restore", "latest", "--target", target.path()]);
        assert_same_tree(src.path(), &restored_path(target.path(), src.path()));
    }
}

//! The tuning-DB loader (`TuningDb::load` on a file of fuzz bytes): any bytes give the
//! entries, or an empty DB with a warning and the file set aside; never a panic. A file that
//! loads exports and loads back to the same contents.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nsac_fuzz::scratch_dir;
use nsac_runtime::tune::TuningDb;

fuzz_target!(|data: &[u8]| {
    let path = scratch_dir().join("tuning.yaml");
    let aside = scratch_dir().join("tuning.yaml.corrupt-1");
    std::fs::write(&path, data).expect("scratch file");
    let db = TuningDb::open(&path);
    let loaded = db
        .load()
        .expect("a regular file in a writable directory loads");
    if !loaded.warnings.is_empty() {
        // Set aside: keep the scratch directory at one file so every run costs the same.
        assert!(loaded.value.entries.is_empty());
        let _ = std::fs::remove_file(&aside);
        return;
    }
    let exported = scratch_dir().join("export.yaml");
    db.export(&exported).expect("a loaded DB exports");
    let back = TuningDb::open(&exported)
        .load()
        .expect("the exported file loads");
    assert!(
        back.warnings.is_empty(),
        "export wrote a file load rejects: {:?}",
        back.warnings
    );
    // Debug text, so NaN times compare equal to themselves.
    assert_eq!(format!("{:?}", back.value), format!("{:?}", loaded.value));
});

//! What several test files share: running a test binary again on every instruction-set
//! path of this CPU.

/// Runs this test binary again, whole, in a child process per instruction-set path the
/// CPU has (INFER_RS_ISA forces it), and asserts that each passes; the paths it lacks are
/// named on stderr. Returns false in such a child, after checking that the forced path
/// is the one in use, so that the calling test ends there.
pub fn rerun_on_every_isa_path(what: &str) -> bool {
    if let Ok(forced) = std::env::var(infer_core::isa::ENV_VAR) {
        assert_eq!(infer_core::isa().unwrap().name(), forced);
        return false;
    }
    for isa in infer_core::Isa::ALL {
        if !isa.supported() {
            let note = format!("{what}: skipped the {isa} path: this CPU lacks it\n");
            std::io::Write::write_all(&mut std::io::stderr(), note.as_bytes()).unwrap();
            continue;
        }
        let child = std::process::Command::new(std::env::current_exe().unwrap())
            .env(infer_core::isa::ENV_VAR, isa.name())
            .arg("--quiet")
            .output()
            .unwrap();
        assert!(
            child.status.success(),
            "the {what} tests fail on the {isa} path:\n{}{}",
            String::from_utf8_lossy(&child.stdout),
            String::from_utf8_lossy(&child.stderr)
        );
    }
    true
}

//! Compiles the C programs under `examples/c/` against `include/synapswap.h` with the system C
//! compiler (`cc`, gcc on the build machines), links them with the library cargo just built, and
//! runs them: statically, dynamically (`libsynapswap.so`), and once under AddressSanitizer and
//! UndefinedBehaviorSanitizer. Each program checks every byte it reads through
//! `synapswap_get_vram_ptr` and exits non-zero on any failure.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The directory holding a fresh `libsynapswap.a` / `.so`. `cargo test` does not (re)build a
/// library's C crate types for integration tests, so this builds them once per test process
/// with the same cargo, profile and target directory (`cargo build -p synapswap-capi`).
fn lib_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let exe = std::env::current_exe().expect("test binary path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target/<profile>/deps");
        let target = profile_dir.parent().expect("target dir");
        let profile = profile_dir
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-p", "synapswap-capi", "--target-dir"])
            .arg(target)
            .current_dir(root());
        if profile == "release" {
            cmd.arg("--release");
        } else if profile != "debug" {
            cmd.args(["--profile", &profile]);
        }
        let out = cmd.output().expect("run cargo build");
        assert!(
            out.status.success(),
            "cargo build -p synapswap-capi failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for lib in ["libsynapswap.a", "libsynapswap.so"] {
            assert!(profile_dir.join(lib).exists(), "{lib} was not built");
        }
        profile_dir.to_path_buf()
    })
    .clone()
}

fn out_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("synapswap-c-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[derive(Clone, Copy, PartialEq)]
enum Link {
    Static,
    Shared,
    Sanitized,
}

fn build_and_run(program: &str, link: Link) -> String {
    let src = root().join("examples/c").join(format!("{program}.c"));
    let lib = lib_dir();
    let exe = out_dir().join(format!(
        "{program}-{}",
        match link {
            Link::Static => "static",
            Link::Shared => "shared",
            Link::Sanitized => "asan",
        }
    ));
    let mut cc = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()));
    cc.args([
        "-std=c11", "-g", "-O1", "-Wall", "-Wextra", "-Werror", "-pthread",
    ])
    .arg("-I")
    .arg(root().join("include"))
    .arg("-I")
    .arg(root().join("examples/c"))
    .arg(&src)
    .arg("-o")
    .arg(&exe);
    match link {
        Link::Static | Link::Sanitized => {
            if link == Link::Sanitized {
                cc.args([
                    "-fsanitize=address,undefined",
                    "-fno-omit-frame-pointer",
                    "-fno-sanitize-recover=all",
                ]);
            }
            cc.arg(lib.join("libsynapswap.a")).args(["-ldl", "-lm"]);
        }
        Link::Shared => {
            cc.arg("-L")
                .arg(&lib)
                .arg("-lsynapswap")
                .arg(format!("-Wl,-rpath,{}", lib.display()));
        }
    }
    let out = cc.output().unwrap_or_else(|e| {
        panic!("cannot run the C compiler (cc; set CC to choose another): {e}")
    });
    assert!(
        out.status.success(),
        "compiling {program}.c failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = Command::new(&exe)
        .env(
            "ASAN_OPTIONS",
            "detect_leaks=1:abort_on_error=0:exitcode=86",
        )
        .env("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
        .output()
        .expect("run the program");
    let stdout = String::from_utf8_lossy(&run.stdout).into_owned();
    assert!(
        run.status.success(),
        "{program} ({}) failed with {:?}:\n{stdout}\n{}",
        exe.display(),
        run.status,
        String::from_utf8_lossy(&run.stderr)
    );
    let _ = std::fs::remove_file(&exe);
    stdout
}

#[test]
fn stress_30_layers() {
    let out = build_and_run("stress", Link::Static);
    assert!(out.contains("bytes verified"), "{out}");
}

#[test]
fn stress_30_layers_under_address_sanitizer() {
    let out = build_and_run("stress", Link::Sanitized);
    assert!(out.contains("bytes verified"), "{out}");
}

#[test]
fn fanout_graph_with_two_engines_shared_library() {
    let out = build_and_run("fanout", Link::Shared);
    assert!(out.contains("bytes verified"), "{out}");
}

#[test]
fn misuse_is_survived() {
    let out = build_and_run("misuse", Link::Static);
    assert!(out.contains("every bad input"), "{out}");
}

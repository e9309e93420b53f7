//! `weir plugin …` and `weir pipeline …`: scaffold, build and deploy plugins; run pipelines.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

use crate::cli::{Client, parse_pairs};
use crate::error::{Error, Result, io};

/// Kinds `weir plugin new` scaffolds, with the function it writes for each and the body of a
/// native test of that function.
const TEMPLATES: [(&str, &str, &str); 7] = [
    (
        "filter",
        "/// Keeps the records that do not contain `word` (default DEBUG).\n#[weir::filter]\npub fn run(r: &Record, params: &Params) -> bool {\n    let word = params.get(\"word\").unwrap_or(\"DEBUG\");\n    !String::from_utf8_lossy(&r.value).contains(word)\n}\n",
        "let params = Params::from_pairs([(\"word\", \"DEBUG\")]);\n        assert!(super::run(&Record::new(\"INFO started\"), &params));\n        assert!(!super::run(&Record::new(\"DEBUG noisy\"), &params));",
    ),
    (
        "map",
        "/// Upper-cases the value.\n#[weir::map]\npub fn run<'a>(r: Record<'a>, _params: &Params) -> Result<Record<'a>> {\n    let upper = r.value_str()?.to_uppercase();\n    Ok(r.with_value(upper))\n}\n",
        "let out = super::run(Record::new(\"shout\"), &Params::default()).unwrap();\n        assert_eq!(out.value_str().unwrap(), \"SHOUT\");",
    ),
    (
        "filter_map",
        "/// Keeps non-empty values, trimmed.\n#[weir::filter_map]\npub fn run<'a>(r: Record<'a>, _params: &Params) -> Result<Option<Record<'a>>> {\n    let trimmed = r.value_str()?.trim().to_owned();\n    Ok((!trimmed.is_empty()).then(|| r.with_value(trimmed)))\n}\n",
        "let params = Params::default();\n        assert!(super::run(Record::new(\"   \"), &params).unwrap().is_none());\n        let kept = super::run(Record::new(\" x \"), &params).unwrap().unwrap();\n        assert_eq!(kept.value_str().unwrap(), \"x\");",
    ),
    (
        "flat_map",
        "/// One record per word of the value.\n#[weir::flat_map]\npub fn run<'a>(r: Record<'a>, _params: &Params) -> Result<Vec<Record<'a>>> {\n    Ok(r.value_str()?.split_whitespace().map(|w| Record::new(w)).collect())\n}\n",
        "let words = super::run(Record::new(\"to be or\"), &Params::default()).unwrap();\n        let words: Vec<&str> = words.iter().map(|w| w.value_str().unwrap()).collect();\n        assert_eq!(words, [\"to\", \"be\", \"or\"]);",
    ),
    (
        "partitioner",
        "/// Spreads records by the length of their value.\n#[weir::partitioner]\npub fn run(r: &Record, partitions: u32, _params: &Params) -> u32 {\n    r.value.len() as u32 % partitions\n}\n",
        "assert_eq!(super::run(&Record::new(\"abcd\"), 3, &Params::default()), 1);",
    ),
    (
        "aggregate",
        "/// Counts records per key and window (`window_ms`, default one minute).\n#[derive(Default, serde::Serialize, serde::Deserialize)]\npub struct Count(u64);\n\n#[weir::aggregate]\nimpl weir::Aggregate for Count {\n    fn key(r: &Record, _params: &Params) -> Result<Option<String>> {\n        Ok(Some(r.key_str().unwrap_or(\"\").to_owned()))\n    }\n    fn add(&mut self, _r: &Record, _params: &Params) -> Result<()> {\n        self.0 += 1;\n        Ok(())\n    }\n    fn finish(&self, key: &str, window: weir::Window, _params: &Params) -> Result<Record<'static>> {\n        Record::json(&serde_json::json!({\"key\": key, \"window_start_ms\": window.start_ms, \"count\": self.0}))\n    }\n}\n",
        "use weir::Aggregate;\n        let params = Params::default();\n        let mut count = super::Count::default();\n        count.add(&Record::new(\"a\"), &params).unwrap();\n        count.add(&Record::new(\"b\"), &params).unwrap();\n        let window = weir::Window { start_ms: 0, end_ms: 60_000 };\n        let out = count.finish(\"k\", window, &params).unwrap();\n        assert_eq!(out.value_str().unwrap(), r#\"{\"count\":2,\"key\":\"k\",\"window_start_ms\":0}\"#);",
    ),
    (
        "scalar",
        "/// The text's first word, lower-cased; NULL for a blank text. In SQL after\n/// `CREATE FUNCTION first_word AS PLUGIN '<name>'`: `SELECT first_word(value_text) FROM logs`.\n#[weir::scalar]\npub fn run(v: &str, _params: &Params) -> Option<String> {\n    v.split_whitespace().next().map(str::to_lowercase)\n}\n",
        "assert_eq!(super::run(\"GET /index.html\", &Params::default()).as_deref(), Some(\"get\"));\n        assert_eq!(super::run(\"   \", &Params::default()), None);",
    ),
];

/// Writes a plugin crate `dir/name` of the given kind, ready for `weir plugin build`.
pub fn new(name: &str, kind: &str, dir: &Path, sdk: Option<&Path>) -> Result<PathBuf> {
    let Some((_, function, test)) = TEMPLATES.iter().find(|(k, _, _)| *k == kind) else {
        let kinds: Vec<&str> = TEMPLATES.iter().map(|(k, _, _)| *k).collect();
        return Err(Error::Invalid(format!(
            "unknown plugin kind {kind:?}; kinds: {}",
            kinds.join(", ")
        )));
    };
    weir_runtime::validate_plugin_name(name).map_err(|e| Error::Invalid(e.to_string()))?;
    let root = dir.join(name);
    if root.exists() {
        return Err(Error::Invalid(format!("{} already exists", root.display())));
    }
    // A scaffolded plugin depends on the SDK by path: the one given, else this binary's own.
    let sdk = match sdk {
        Some(path) => path.to_path_buf(),
        None => crate::sdk::installed()?,
    };
    let sdk = sdk.canonicalize().map_err(|e| Error::File {
        path: sdk.clone(),
        reason: format!("the weir SDK is not there ({e}); pass --sdk"),
    })?;
    let write = |path: &Path, text: &str| {
        std::fs::create_dir_all(path.parent().unwrap_or(&root))
            .and_then(|()| std::fs::write(path, text))
            .map_err(io(format!("writing {}", path.display())))
    };
    let manifest = format!(
        "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2024\"\n\n\
         [lib]\n# cdylib for the wasm module, rlib for `cargo test`.\ncrate-type = [\"cdylib\", \"rlib\"]\n\n\
         [dependencies]\nweir = {{ package = \"weir-guest\", path = {sdk:?} }}\nserde = {{ version = \"1\", features = [\"derive\"] }}\nserde_json = \"1\"\n\n\
         [profile.release]\nstrip = true\npanic = \"abort\"\n"
    );
    write(&root.join("Cargo.toml"), &manifest)?;
    let lib = format!(
        "//! Weir plugin `{name}` ({kind}). Build with `weir plugin build`, deploy with\n//! `weir plugin deploy {name} target/wasm32-unknown-unknown/release/{file}.wasm`.\n\n#[allow(unused_imports)]\nuse weir::{{Params, Record, Result}};\n\n{function}\n#[cfg(test)]\nmod tests {{\n    use weir::{{Params, Record}};\n\n    #[test]\n    fn runs_natively() {{\n        {test}\n    }}\n}}\n",
        file = name.replace('-', "_")
    );
    write(&root.join("src/lib.rs"), &lib)?;
    write(&root.join(".gitignore"), "/target\n")?;
    write(
        &root.join("rust-toolchain.toml"),
        &format!("[toolchain]\nchannel = \"stable\"\ntargets = [\"{WASM_TARGET}\"]\n"),
    )?;
    write(
        &root.join(".cargo/config.toml"),
        "# wasmtime runs WebAssembly SIMD: let memchr, regex and friends use it.\n\
         [target.wasm32-unknown-unknown]\nrustflags = [\"-C\", \"target-feature=+simd128\"]\n",
    )?;
    Ok(root)
}

/// The target plugins are built for.
const WASM_TARGET: &str = "wasm32-unknown-unknown";

/// Whether the toolchain that builds the crate in `dir` (its `rust-toolchain.toml`, else the
/// default) has the standard library of [`WASM_TARGET`]; if not, says the command that adds it.
fn check_wasm_target(dir: &Path) -> Result<()> {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let out = Command::new(&rustc)
        .current_dir(dir)
        .args(["--print", "sysroot"])
        .output()
        .map_err(io(format!("running {rustc}")))?;
    let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() || sysroot.is_empty() {
        return Err(Error::Invalid(format!(
            "{rustc} --print sysroot failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    if Path::new(&sysroot)
        .join("lib/rustlib")
        .join(WASM_TARGET)
        .is_dir()
    {
        return Ok(());
    }
    Err(Error::Invalid(format!(
        "the Rust toolchain at {sysroot} cannot build plugins: its {WASM_TARGET} target is not \
         installed. Add it with: rustup target add {WASM_TARGET}"
    )))
}

/// Builds the plugin crate in `dir` to wasm and returns the module's path.
pub fn build(dir: &Path) -> Result<PathBuf> {
    check_wasm_target(dir)?;
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(dir)
        .args(["build", "--release", "--target", WASM_TARGET])
        .status()
        .map_err(io("running cargo"))?;
    if !status.success() {
        return Err(Error::Invalid(
            "cargo build failed; its errors are above".into(),
        ));
    }
    let metadata = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(dir)
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .output()
        .map_err(io("running cargo metadata"))?;
    let metadata: Value = serde_json::from_slice(&metadata.stdout)
        .map_err(|e| Error::Invalid(format!("cargo metadata: {e}")))?;
    let target_dir = metadata["target_directory"]
        .as_str()
        .ok_or_else(|| Error::Invalid("cargo metadata has no target directory".into()))?;
    let name = metadata["packages"][0]["name"]
        .as_str()
        .ok_or_else(|| Error::Invalid("cargo metadata has no package".into()))?;
    let wasm = Path::new(target_dir)
        .join(WASM_TARGET)
        .join("release")
        .join(format!("{}.wasm", name.replace('-', "_")));
    if !wasm.exists() {
        return Err(Error::File {
            path: wasm,
            reason: "not built; is the crate a cdylib?".into(),
        });
    }
    Ok(wasm)
}

pub fn deploy(c: &Client, name: &str, file: &Path, params: &[String]) -> Result<()> {
    let wasm = std::fs::read(file).map_err(io(format!("reading {}", file.display())))?;
    let query: Vec<String> = parse_pairs("param", params)?
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect();
    let path = if query.is_empty() {
        format!("/v1/plugins/{name}")
    } else {
        format!("/v1/plugins/{name}?{}", query.join("&"))
    };
    let version = c.send("PUT", &path, "application/wasm", &wasm)?;
    println!(
        "deployed {name} version {} ({}, sha256 {})",
        version["version"],
        version["kind"].as_str().unwrap_or(""),
        version["sha256"].as_str().unwrap_or("")
    );
    Ok(())
}

/// Percent-encodes a query component.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub fn list(c: &Client) -> Result<()> {
    let plugins = c.call("GET", "/v1/plugins", None)?;
    println!(
        "{:<32} {:<12} {:>8} {:>9} {:>4}  SHA256",
        "PLUGIN", "KIND", "VERSION", "VERSIONS", "ABI"
    );
    for p in plugins.as_array().into_iter().flatten() {
        let versions = p["versions"].as_array().map_or(0, Vec::len);
        let active = p["versions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| v["version"] == p["active"]);
        let field = |k: &str| active.and_then(|v| v[k].as_str()).unwrap_or("").to_string();
        let abi = active.map_or(String::new(), |v| v["abi_version"].to_string());
        println!(
            "{:<32} {:<12} {:>8} {:>9} {:>4}  {}",
            p["name"].as_str().unwrap_or(""),
            field("kind"),
            p["active"].to_string(),
            versions,
            abi,
            field("sha256")
        );
    }
    Ok(())
}

pub fn show(c: &Client, path: &str) -> Result<()> {
    crate::cli::print_json(&c.call("GET", path, None)?);
    Ok(())
}

pub fn rollback(c: &Client, name: &str, to: Option<u32>) -> Result<()> {
    let version = c.call(
        "POST",
        &format!("/v1/plugins/{name}/rollback"),
        Some(&json!({ "version": to })),
    )?;
    println!("{name} now runs version {}", version["version"]);
    Ok(())
}

pub fn delete(c: &Client, path: &str, what: &str) -> Result<()> {
    c.call("DELETE", path, None)?;
    println!("deleted {what}");
    Ok(())
}

/// What `weir pipeline create` sends.
pub struct PipelineArgs<'a> {
    pub name: &'a str,
    pub from: &'a str,
    pub through: &'a [String],
    pub partition_by: Option<&'a str>,
    pub to: &'a [String],
    pub from_offset: &'a str,
    pub dead_letter: Option<&'a str>,
    pub lateness_ms: i64,
    pub idle_timeout_ms: i64,
}

pub fn pipeline_create(c: &Client, args: &PipelineArgs) -> Result<()> {
    let body = json!({
        "name": args.name,
        "from": args.from,
        "through": args.through,
        "partition_by": args.partition_by,
        "to": args.to,
        "from_offset": args.from_offset,
        "dead_letter": args.dead_letter,
        "lateness_ms": args.lateness_ms,
        "idle_timeout_ms": args.idle_timeout_ms,
    });
    c.call("POST", "/v1/pipelines", Some(&body))?;
    println!(
        "created pipeline {}: {} → {} → {}",
        args.name,
        args.from,
        args.through.join(" → "),
        args.to.join(", ")
    );
    Ok(())
}

pub fn pipeline_list(c: &Client) -> Result<()> {
    let pipelines = c.call("GET", "/v1/pipelines", None)?;
    println!(
        "{:<24} {:<7} {:<8} {:>10} {:>12} {:>12} {:>10} {:>8}  LAST ERROR",
        "PIPELINE", "KIND", "STATUS", "LAG", "IN", "OUT", "DEAD", "LATE"
    );
    for p in pipelines.as_array().into_iter().flatten() {
        let kind = if p["spec"]["sql"].is_string() {
            "sql"
        } else {
            "plugins"
        };
        println!(
            "{:<24} {:<7} {:<8} {:>10} {:>12} {:>12} {:>10} {:>8}  {}",
            p["spec"]["name"].as_str().unwrap_or(""),
            kind,
            p["status"].as_str().unwrap_or(""),
            p["lag"].to_string(),
            p["records_in"].to_string(),
            p["records_out"].to_string(),
            p["dead_lettered"].to_string(),
            p["late_records"].to_string(),
            last_error(p)
        );
    }
    Ok(())
}

/// A pipeline's last error with how long ago it happened: `(3 min ago) reason`.
fn last_error(pipeline: &Value) -> String {
    let Some(error) = pipeline["last_error"].as_str() else {
        return String::new();
    };
    let Some(at_ms) = pipeline["last_error_ms"].as_i64() else {
        return error.to_owned();
    };
    let seconds = (weir_storage::now_ms() - at_ms).max(0) / 1000;
    let ago = match seconds {
        0..120 => format!("{seconds} s"),
        120..7200 => format!("{} min", seconds / 60),
        7200..172_800 => format!("{} h", seconds / 3600),
        _ => format!("{} d", seconds / 86_400),
    };
    format!("({ago} ago) {error}")
}

pub fn pipeline_action(c: &Client, name: &str, action: &str) -> Result<()> {
    let status = c.call("POST", &format!("/v1/pipelines/{name}/{action}"), None)?;
    println!(
        "pipeline {name} is {}",
        status["status"].as_str().unwrap_or("?")
    );
    Ok(())
}

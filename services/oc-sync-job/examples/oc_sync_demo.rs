//! `make demo`'s oc-sync-job flow: the tests' fake Open Connectors tenant and fake Compass
//! as local servers, the job run against them, an instance removed and one renamed, and
//! the second run's plan and result.
//!
//! `oc_sync_demo --job PATH/oc-sync-job --dir DIR`

use std::path::PathBuf;

#[path = "../tests/it/fake_compass.rs"]
#[allow(dead_code)]
mod fake_compass;
#[path = "../tests/it/fake_oc.rs"]
#[allow(dead_code)]
mod fake_oc;

use fake_oc::FakeInstance;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (job, dir) = match args.as_slice() {
        [a, job, b, dir] if a == "--job" && b == "--dir" => {
            (PathBuf::from(job), PathBuf::from(dir))
        }
        _ => {
            eprintln!("usage: oc_sync_demo --job PATH --dir DIR");
            std::process::exit(2);
        }
    };
    std::fs::create_dir_all(&dir)?;
    let mut instances = vec![
        FakeInstance::new(101, "crm-production"),
        FakeInstance::new(102, "crm-sandbox"),
        FakeInstance::new(103, "erp"),
        FakeInstance::new(104, "ticketing"),
    ];
    instances[2].element_key = "sapbydesign".into();
    instances[3].element_key = "zendesk".into();
    let oc = fake_oc::FakeOc::start(instances).await;
    let compass = fake_compass::FakeCompass::start().await;
    // An application someone made by hand: not the job's, never touched.
    compass.with(|s| s.insert("hand-made", serde_json::json!({"team": "crm"}), true));
    let config = serde_json::json!({
        "logLevel": "Warn",
        "compass": {
            "directorURL": compass.director_url(),
            "tenantId": fake_compass::TENANT,
            "tokenUrl": compass.token_url(),
            "clientID": fake_compass::CLIENT_ID,
            "clientSecret": fake_compass::CLIENT_SECRET,
            "applicationPrefix": "oc",
            "timeoutMills": 6000
        },
        "openConnectors": {
            "hostname": oc.hostname(),
            "organizationSecret": fake_oc::ORG_SECRET,
            "userSecret": fake_oc::USER_SECRET,
            "timeoutMills": 6000
        }
    });
    let path = dir.join("config.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&config)?)?;
    println!(
        "fake Open Connectors on {}, fake Compass on {}; 4 instances, 1 hand-made application",
        oc.addr, compass.addr
    );

    let run = |flags: &'static [&'static str]| {
        let (job, path) = (job.clone(), path.clone());
        async move {
            println!("$ oc-sync-job -config config.json {}", flags.join(" "));
            let status = tokio::process::Command::new(&job)
                .arg("-config")
                .arg(&path)
                .args(flags)
                .env_remove("RUST_LOG")
                .status()
                .await?;
            let code = status.code().unwrap_or(-1);
            println!("exit code: {code}");
            Ok::<i32, std::io::Error>(code)
        }
    };
    let step = |text: &str| println!("\n\x1b[1m==> {text}\x1b[0m");
    let applications = |compass: &fake_compass::FakeCompass| {
        compass.with(|s| {
            for app in s.apps.values() {
                let api = app.bundles.iter().flat_map(|b| b.apis.iter()).next();
                println!(
                    "  {:<10} {:<62} api: {}",
                    app.name,
                    app.description.as_deref().unwrap_or(""),
                    api.map_or("none".to_owned(), |a| format!(
                        "{} -> {}",
                        a.name, a.target_url
                    ))
                );
            }
        })
    };
    step("first run: one application per instance, each with its OpenAPI document");
    run(&[]).await?;
    applications(&compass);

    step("second run: nothing to do (only the two listings are called)");
    compass.with(|s| s.operations.clear());
    run(&[]).await?;
    let (queries, mutations) = compass.with(|s| (s.operations.len(), s.mutations().len()));
    println!(
        "Director calls: {queries} listing queries (a count, then the 16 shards at once), {mutations} mutations"
    );

    step("instance 104 removed from the tenant, instance 102 renamed");
    oc.with(|s| {
        s.instances.retain(|i| i.id != 104);
        s.instances
            .iter_mut()
            .find(|i| i.id == 102)
            .expect("102")
            .name = "crm-staging".into();
    });
    run(&["--dry-run", "--detailed-exitcode"]).await?;
    run(&[]).await?;
    applications(&compass);

    step("a third run, its result as one JSON line (--output json)");
    run(&["--output", "json"]).await?;
    Ok(())
}

//! Reading manifest directories: multi-document files, kinds dispatched,
//! others ignored, and bad files or documents reported and skipped.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use weft_operator::cluster::ObjectKey;
use weft_operator::manifests::load_dir;

const APP: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  annotations: {weft.dev/inject: enabled}
---
apiVersion: v1
kind: Service
metadata: {name: cart, namespace: shop}
spec:
  clusterIP: 198.19.0.10
  selector: {app: cart}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: ignored, namespace: shop}
---
apiVersion: weft.dev/v1alpha1
kind: MeshPolicy
metadata: {name: strict, namespace: shop}
spec:
  mtls: {mode: Strict}
"#;

const BAD_DOC: &str = r#"
apiVersion: v1
kind: ServiceAccount
metadata: {name: cart}
---
apiVersion: v1
kind: Pod
metadata: {name: broken, namespace: shop}
spec: {containers: "not a list"}
---
apiVersion: v1
kind: Pod
metadata: {namespace: shop}
---
apiVersion: v1
kind: Pod
metadata: {name: "../../../tmp/escape", namespace: shop}
"#;

#[test]
fn reads_every_document_and_reports_bad_ones_with_file_and_index() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("nested")).unwrap();
    std::fs::write(dir.path().join("app.yaml"), APP).unwrap();
    std::fs::write(dir.path().join("nested/more.yml"), BAD_DOC).unwrap();
    std::fs::write(dir.path().join("broken.yaml"), "kind: [unclosed").unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not a manifest").unwrap();

    let loaded = load_dir(dir.path()).unwrap();
    let c = &loaded.cluster;
    assert_eq!(c.namespaces.keys().collect::<Vec<_>>(), ["shop"]);
    assert!(c.services.contains_key(&ObjectKey::new("shop", "cart")));
    assert!(c.policies.contains_key(&ObjectKey::new("shop", "strict")));
    assert!(
        c.service_accounts
            .contains_key(&ObjectKey::new("default", "cart")),
        "no namespace means default, as kubectl does"
    );
    assert!(c.pods.is_empty());
    assert_eq!(loaded.ignored, 1);

    let errors: Vec<String> = loaded.errors.iter().map(ToString::to_string).collect();
    assert_eq!(errors.len(), 4, "{errors:#?}");
    assert!(errors[0].contains("broken.yaml: not YAML"), "{errors:#?}");
    assert!(
        errors[1].contains("nested/more.yml (document 1): Pod \"broken\""),
        "{errors:#?}"
    );
    assert!(
        errors[2].contains("nested/more.yml (document 2): Pod has no metadata.name"),
        "{errors:#?}"
    );
    assert!(
        errors[3].contains(
            r#"(document 3): Pod metadata.name "../../../tmp/escape" is not a DNS subdomain name"#
        ),
        "{errors:#?}"
    );
}

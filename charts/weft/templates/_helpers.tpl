{{/*
Names. Weft is one mesh per cluster: the operator looks its objects up by
fixed names (Secret weft-trust-anchor, and the names passed as flags below),
so the objects are named for what they are, not for the release.
*/}}
{{- define "weft.operatorName" -}}weft-operator{{- end }}

{{/* Labels of every object. Never `app.kubernetes.io/managed-by: weft`:
that label marks the objects the operator writes and prunes. */}}
{{- define "weft.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: weft
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: weft
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selects the operator pods (Deployment, PDB, webhook Service, anti-affinity). */}}
{{- define "weft.operatorSelector" -}}
app.kubernetes.io/name: weft
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/* "registry/repository:tag" or "registry/repository@digest".
Call with (list $ .Values.images.<name>). */}}
{{- define "weft.image" -}}
{{- $root := index . 0 -}}
{{- $img := index . 1 -}}
{{- $repo := $img.repository -}}
{{- with $root.Values.images.registry -}}
{{- $repo = printf "%s/%s" (trimSuffix "/" .) $repo -}}
{{- end -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $repo $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo (toString ($img.tag | default $root.Values.images.tag | default $root.Chart.AppVersion)) -}}
{{- end -}}
{{- end }}

/*
 * OHIF Viewer configuration for this service, served as /app-config.js by the sidecar (make run)
 * and mounted into the ohif/app container (docker-compose.yml). The viewer runs at the root of
 * the same origin as /dicom-web and /wado, which the front proxies to Orthanc with the user's
 * session: Orthanc sends no CORS headers, and relative roots need no per-host configuration.
 *
 * Data source settings measured against Orthanc 1.10.1 + DICOMweb 1.7 (shared NOTES, "OHIF"):
 * no staticWado and no singlepart (Orthanc serves multipart), QIDO includefield is supported,
 * wildcards yes, fuzzy matching no.
 */
window.config = {
  routerBasename: '/',
  extensions: [],
  modes: [],
  showStudyList: true,
  maxNumberOfWebWorkers: 3,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: true,
  showLoadingIndicator: true,
  strictZSpacingForVolumeViewport: true,
  // A study opened from the sidecar's viewerUrl must show images at once: the onboarding tour
  // would cover the viewport in every fresh browser profile.
  customizationService: { 'ohif.tours': { $set: [] } },
  defaultDataSourceName: 'orthanc',
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'orthanc',
      configuration: {
        friendlyName: 'Radiology archive (Orthanc)',
        name: 'orthanc',
        qidoRoot: '/dicom-web',
        wadoRoot: '/dicom-web',
        wadoUriRoot: '/wado',
        qidoSupportsIncludeField: true,
        supportsReject: false,
        // Saving measurements (DICOM SR) and key images: STOW-RS to wadoRoot + '/studies', for
        // radiologists and administrators, checked by the front (sidecar/viewer/stow.py).
        supportsStow: true,
        imageRendering: 'wadors',
        thumbnailRendering: 'wadors',
        enableStudyLazyLoad: true,
        supportsFuzzyMatching: false,
        supportsWildcard: true,
        omitQuotationForMultipartRequest: true,
        bulkDataURI: { enabled: true },
      },
    },
  ],
};

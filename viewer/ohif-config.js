/** StudyPublicator's configuration of the prebuilt OHIF (served under /ohif/): one study at a time from the
 * patient's link, through the DICOM JSON data source (the manifest /s/<key>/view/manifest.json, same origin);
 * no study list, no other data source, no upload, no dynamic configuration, no customization URLs, no
 * service worker, nothing sent anywhere else. */
window.config = {
  name: 'studypub',
  routerBasename: '/ohif',
  extensions: [],
  modes: [],
  customizationService: {},
  showStudyList: false,
  investigationalUseDialog: { option: 'never' },
  maxNumberOfWebWorkers: 2,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: true,
  showLoadingIndicator: true,
  strictZSpacingForVolumeViewport: true,
  allowMultiSelectExport: false,
  maxNumRequests: { interaction: 100, thumbnail: 6, prefetch: 12 },
  showErrorDetails: 'production',
  defaultDataSourceName: 'dicomjson',
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomjson',
      sourceName: 'dicomjson',
      configuration: {
        friendlyName: 'StudyPublicator',
        name: 'json',
        dicomUploadEnabled: false,
      },
    },
  ],
  httpErrorHandler: (error) => {
    console.warn(error.status);
  },
};
